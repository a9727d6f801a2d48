//go:build unix

package xla

import "syscall"

func execve(path string, args, env []string) error { return syscall.Exec(path, args, env) }
