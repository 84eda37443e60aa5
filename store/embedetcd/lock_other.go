//go:build !unix

package embedetcd

import (
	"errors"
	"os"
)

func lockDataDir(dir, path string) (*os.File, error) {
	return nil, errors.New("embedded etcd needs flock, which this platform lacks")
}

func unlockDataDir(f *os.File) error { return f.Close() }
