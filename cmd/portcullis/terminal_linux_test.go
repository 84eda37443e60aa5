package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns the master and slave ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

// TestPasswordPromptDoesNotEcho types a password into a real terminal: it
// is read, never echoed, and echo is back on afterwards.
func TestPasswordPromptDoesNotEcho(t *testing.T) {
	master, slave := openPTY(t)
	if !isTerminal(slave) {
		t.Fatal("the pty slave is not recognised as a terminal")
	}
	if f, err := os.CreateTemp(t.TempDir(), "x"); err == nil {
		if isTerminal(f) {
			t.Fatal("a regular file is taken for a terminal")
		}
		f.Close()
	}
	type result struct {
		pw  string
		err error
	}
	done := make(chan result, 1)
	var prompt bytes.Buffer
	go func() {
		pw, err := readPasswordNoEcho(slave, &prompt, "Password: ")
		done <- result{pw, err}
	}()
	// Type only once echo is off, as a person would after the prompt.
	deadline := time.Now().Add(10 * time.Second)
	for {
		tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if tio.Lflag&unix.ECHO == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("echo never turned off")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := master.WriteString("s3cret-typed\n"); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("password not read")
	}
	if r.err != nil || r.pw != "s3cret-typed" {
		t.Fatalf("read %q, %v", r.pw, r.err)
	}
	if prompt.String() != "Password: \n" {
		t.Fatalf("prompt %q", prompt.String())
	}
	// Echo is restored: this line comes back, the password never did.
	if _, err := master.WriteString("after\n"); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	buf := make([]byte, 256)
	for !strings.Contains(seen.String(), "after") {
		n, err := master.Read(buf)
		if err != nil {
			t.Fatalf("read terminal output: %v (so far %q)", err, seen.String())
		}
		seen.Write(buf[:n])
	}
	if strings.Contains(seen.String(), "s3cret") {
		t.Fatalf("the password was echoed: %q", seen.String())
	}
}
