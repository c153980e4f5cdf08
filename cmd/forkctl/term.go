package main

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The terminal, for top: whether there is one, its size, and its keys.

// isTerminal reports whether fd is a terminal.
func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// terminalSize returns the terminal's columns and rows, asked anew each time so that a resized
// window is seen; 80x24 when the terminal does not say.
func terminalSize(fd int) (width, height int) {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 || ws.Row == 0 {
		return 80, 24
	}
	return int(ws.Col), int(ws.Row)
}

// readKeys reads keys from in, when it is a terminal, one at a time and without echo, and closes
// quit on q. Ctrl-C still interrupts: the terminal's signal keys are left alone. It returns the
// function that gives the terminal its settings back.
func readKeys(in *os.File, quit chan struct{}) (restore func()) {
	fd := int(in.Fd())
	saved, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}
	}
	raw := *saved
	raw.Lflag &^= unix.ICANON | unix.ECHO
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return func() {}
	}
	var once sync.Once
	go func() {
		buf := make([]byte, 1)
		for {
			n, err := in.Read(buf)
			if err != nil {
				return
			}
			if n == 1 && (buf[0] == 'q' || buf[0] == 'Q') {
				once.Do(func() { close(quit) })
				return
			}
		}
	}()
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, saved) }
}
