// Package twoproc tests and measures transfers between two processes: the
// test process is the sender, and it re-executes its own test binary as the
// receiving process, which it drives over a line protocol on stdin/stdout.
// It holds tests and benchmarks only.
package twoproc
