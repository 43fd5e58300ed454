// Package transfer is the transfer manager of a phase process: it owns the
// process's room sockets and shared-memory buffers and moves tensors, one
// sided, from a sender phase into the buffers a receiver phase registered.
//
// A room is one request's transfer slot on one hop (sender instance to
// receiver instance). Its id is chosen by the supervisor, unique for the
// supervisor's lifetime and never reused; a Manager refuses an id it has
// already seen (ErrRoomExists).
//
// # Lifecycle
//
//	m, err := transfer.New(cfg) // validates cfg; no sockets, no goroutines
//	err = m.Start()             // zmq context, socket owner, transfer worker
//	// sender side, opened first (upstream first):
//	ep, err := m.OpenSender(room)
//	err = m.Send(ctx, room, tensors)
//	// receiver side, given the sender's endpoint:
//	err = m.OpenReceiver(room, ep, specs)
//	ts, release, err := m.Receive(ctx, room)
//	release()
//	// either side, upstream first:
//	err = m.Remove(room)
//	err = m.Release(ctx)        // removes every room, stops, cleans up
//
// One room, step by step:
//
//  1. OpenSender binds a PULL room socket on ipc://<Dir>/s-<room>.sock and
//     returns that endpoint; the room is Bootstrapping.
//  2. OpenReceiver allocates one shared-memory segment in ShmDir holding all
//     input buffers (64-byte aligned), binds its PULL status socket on
//     ipc://<Dir>/r-<room>-<generation>.sock, and sends a Descriptor to the
//     sender's endpoint; the receiver room is WaitingForInput.
//  3. The sender validates the descriptor when it arrives (bounds, names,
//     endpoint) and its room becomes WaitingForInput. Send waits for that,
//     then the transfer worker checks every tensor against its buffer, maps
//     the segment, syncs Transferring, copies in 1 MiB chunks, and syncs
//     Success with each tensor's CRC-32C (or Failed with a reason).
//  4. Receive waits for the Success frame, verifies every tensor (spec,
//     length, CRC-32C) and returns views into the mapped segment with a
//     release func; the mapping stays valid until it is called, even across
//     Remove.
//
// Statuses move forward only, one step at a time, or to Failed (see
// Status.CanTransitionTo); Failed always carries a reason.
//
// # Goroutines
//
// Start starts exactly two goroutines and Release stops both:
//
//   - the socket owner, the only goroutine that touches a room socket
//     (bind, connect, send, receive, close). It blocks in a zmq poller with
//     no timeout over every PULL socket plus an inproc wake-up socket. Other
//     goroutines post it commands on a channel and wake it through the
//     wake-up's inproc PUSH socket, the one socket they share, guarded by a
//     mutex (Start creates the pair, Release closes the PUSH). A command
//     that needs an answer carries a reply channel.
//   - the transfer worker, the only goroutine that copies tensor bytes.
//
// There is no goroutine per room, no receive timeout and no sleep: Remove
// wakes the owner with a command and the worker checks for removal between
// chunks.
//
// # Trust
//
// Every frame from the network is checked: it must decode, carry version 1,
// name the room of the socket it arrived on and, for status frames, the
// room's generation. Anything else is dropped and counted (Dropped). A
// descriptor that would make the sender write outside the receiver's
// registered buffers, or that does not match the tensors given to Send,
// fails that room with a reason; other rooms are not affected.
package transfer
