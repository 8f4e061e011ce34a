package bpf

// The generated *_bpfel.go and *_bpfel.o are committed, so building needs
// no clang; `make generate` re-runs these (clang-19, llvm-strip-19,
// libbpf-dev and linux-libc-dev needed).

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -I/usr/include/x86_64-linux-gnu" -target bpfel -type steer_counter steer steer.c
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -I/usr/include/x86_64-linux-gnu" -target bpfel -type synack_key -type synack_val -type synack_counter synack synack.c
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -I/usr/include/x86_64-linux-gnu" -target bpfel -type synwin_counter synwin synwin.c
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -I/usr/include/x86_64-linux-gnu" -target bpfel -type hold_key -type hold_val -type hold_event -type hold_counter synhold synhold.c
