// Package hopbench measures transfer hops between two processes: the
// benchmark process is the sender, and it re-executes its own test binary
// as the receiver. It holds benchmarks only.
package hopbench
