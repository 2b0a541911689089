package revoke

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/stemhq/stem/internal/fileperm"
)

// lockFile takes an exclusive flock(2) on path (created if missing, mode
// 0640 minus the umask; never through a symlink) and
// returns the function that releases it. Each call opens its own
// descriptor, so two calls exclude each other even within one process.
//
// flock cannot be interrupted by a context, so a contended lock is waited
// for in a goroutine; when ctx ends first, lockFile returns and that
// goroutine closes the descriptor as soon as flock returns, which releases
// the lock if it was taken.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, _, err := fileperm.OpenFile(path, os.O_RDWR)
	if err != nil {
		return nil, fmt.Errorf("revoke file lock: %w", err)
	}
	fd := int(f.Fd())
	release := func() {
		_ = unix.Flock(fd, unix.LOCK_UN)
		_ = f.Close()
	}
	err = flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return release, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		_ = f.Close()
		return nil, fmt.Errorf("revoke file lock %s: flock: %w", path, err)
	}
	done := make(chan error, 1)
	go func() { done <- flock(fd, unix.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("revoke file lock %s: flock: %w", path, err)
		}
		return release, nil
	case <-ctx.Done():
		go func() {
			<-done
			_ = f.Close()
		}()
		return nil, fmt.Errorf("revoke file lock %s: waiting for another process: %w", path, ctx.Err())
	}
}

// flock calls flock(2), retrying when a signal interrupts it.
func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
