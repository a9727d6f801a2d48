//go:build !unix

package xla

import "errors"

func execve(path string, args, env []string) error { return errors.New("re-exec not supported") }
