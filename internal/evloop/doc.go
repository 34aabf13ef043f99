// Package evloop is the frame pj's event loops share: the TCP engine's and
// the UDP engine's. A Poller is an epoll instance with the wait those loops
// make, and an inbox through which other goroutines hand a loop work;
// Active counts what the loops hold open and tells who waits for none.
// What a loop does with its events stays in its own package.
package evloop
