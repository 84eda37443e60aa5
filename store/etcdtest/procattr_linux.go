package etcdtest

import "syscall"

// procAttr makes the kernel kill etcd when the test binary dies, even by
// SIGKILL or a panic that skips every cleanup, so no etcd outlives its test.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
