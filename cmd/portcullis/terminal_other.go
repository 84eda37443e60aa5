//go:build !linux

package main

import (
	"errors"
	"io"
	"os"
)

// isTerminal is false where the CLI cannot turn off echo: the password
// must then come from --password-file or --password-stdin.
func isTerminal(*os.File) bool { return false }

func readPasswordNoEcho(*os.File, io.Writer, string) (string, error) {
	return "", errors.New("reading a password from the terminal is not supported on this system; use --password-file or --password-stdin")
}
