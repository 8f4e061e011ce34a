//go:build race

package main

// The race detector shadows every allocation: resident memory is not
// the runtime's own then.
const raceEnabled = true
