package main

import "github.com/urfave/cli/v2"

func decodeCommand(io stdio) *cli.Command {
	return &cli.Command{Name: "decode", Usage: "decode Convert messages (work in progress)"}
}
