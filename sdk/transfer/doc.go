// Package transfer is the transfer manager of a phase process: it owns the
// process's room sockets and shared-memory buffers and moves tensors, one
// sided, from a sender phase into the buffers a receiver phase registered.
//
// A room is one request's transfer slot on one hop (sender instance to
// receiver instance). Its id is chosen by the supervisor, unique for the
// supervisor's lifetime and never reused; a Manager refuses an id it has
// already seen (ErrRoomExists). It remembers them in bounded memory: a
// low-water mark below which every id counts as used, plus a set of at
// most 4096 ids above it; when the set is full its lower half is folded
// into the mark. Ids increase, so only an id arriving more than about
// 2,000 opens after larger ones would be wrongly refused.
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
//  2. OpenReceiver takes one shared-memory segment in ShmDir from its pool
//     (see below), renamed phased-<Name>-<room>-<generation>: a 64-byte
//     control block (zeroed), then all input buffers, 64-byte aligned. It
//     binds its PULL status socket on ipc://<Dir>/r-<room>-<generation>.sock
//     and sends a Descriptor to the sender's endpoint; the receiver room is
//     WaitingForInput.
//  3. The sender validates the descriptor when it arrives (bounds, names,
//     endpoint, no buffer over the control block) and its room becomes
//     WaitingForInput. Send waits for that, then the transfer worker checks
//     every tensor against its buffer, maps the segment (kept mapped across
//     rooms, see below), hands the Transferring frame to the socket owner
//     and, without waiting for it, copies one checksum block (256 KiB) at a
//     time: it hashes each block right after copying it and writes how far
//     it got into the control block (waking the receiver with a futex if it
//     sleeps there). Then it syncs Success with each tensor's checksum (or
//     Failed with a reason).
//  4. Receive, once the room is Transferring, verifies the blocks the
//     control block says are copied while the sender copies the next ones
//     (the two processes work on two cores at once), sleeping on the
//     control block's futex in between; a room change (Success, a failure,
//     Remove, the end of ctx) wakes it too. When the Success frame comes it
//     checks every tensor's spec and length, hashes what is left, compares
//     the checksums, and returns views into the mapped segment with a
//     release func; the mapping stays valid until it is called, even across
//     Remove. The receiver trusts nothing in the control block: progress is
//     clamped to its buffers, and a block changed after it was verified
//     fails the room with a checksum mismatch.
//
// A tensor's checksum (tensor.Checksum) is XXH3-64 over 256 KiB blocks,
// each seeded with the previous block's result, so that both sides can
// hash block by block.
//
// # Segment pool and mapping cache
//
// A fresh segment costs a page fault per 4 KiB page on both sides, so a
// receiver keeps freed segments mapped in a pool (Config.PoolSegments and
// Config.PoolBytes bound it; the least recently freed are unlinked first;
// Release unlinks all). A room takes the smallest idle segment that fits
// and is at most twice its size class (a power of two up to 2 MiB, then a
// multiple of 2 MiB), or creates one of its size class. Reuse is safe
// because a segment goes back to the pool only when its room is removed,
// no Receive lease is outstanding, and the sender's Success or Failed
// frame arrived: the sender writes before it sends either, and Send runs
// once per room, so nothing writes to the segment any more. Otherwise
// (a sender removed mid-copy, a room that never moved data, a lease still
// held) the segment is unlinked as before and never reused. Idle segments
// are renamed phased-<Name>-free-<n>, a name that no descriptor can
// carry, since a descriptor's segment must end in -<room>-<generation>;
// when reused, a segment is renamed (renameat2, RENAME_NOREPLACE) to the
// new room's name, so a name still ties a descriptor to one live room.
// Old data left in a reused segment is visible to the next room's sender.
//
// The sender's transfer worker keeps each receiver segment it writes to
// mapped (at most 64 segments and 4 GiB), keyed by the file's device and
// inode. Each job still opens the descriptor's name (O_NOFOLLOW, regular
// file, exact size) and uses the cached mapping only when it is the same
// file with the same size; a mapping is dropped when its file is unlinked
// (checked before each job), shows another size, or faults (a truncated
// file raises SIGBUS, which fails only that room). Release unmaps them.
//
// # The zmq backend
//
// A room opened with OpenSenderWith/OpenReceiverWith(sdk.BackendZMQ) is for a
// hop between hosts. Its sockets bind tcp://<ZMQHost>:* (loopback unless
// Config.ZMQHost says) and report the bound endpoint. The receiver's
// buffers are Go memory (64-byte aligned); its descriptor names no
// segment. The sender checksums each tensor, syncs Transferring, and the
// socket owner queues the tensors on its connection to the receiver's
// status socket as data messages of two parts: a 28-byte header (magic
// "PHD1", room, generation, offset) and at most 4 MiB of bytes; then
// Success follows on the same connection, so it arrives last. The
// receiver's owner checks each header (room, generation, Transferring, an
// offset inside one of the room's buffers) and receives the bytes straight
// into that buffer with zmq_recv (zmqraw.go); bytes that would run past
// the buffer fail the room, anything else wrong is dropped and counted.
//
// With Config.Curve (CurveFromEnv, the cluster's key file), both tcp
// sockets of a zmq room use CURVE: the bound one is a server, the
// connecting one a client, all with the cluster's one key pair. The
// socket owner also holds a ZAP handler, a ROUTER bound to
// inproc://zeromq.zap.01 in the Manager's own context and read like the
// room sockets, which admits only clients that present the cluster's
// public key (curve.go); Refused counts the others. A connection counts
// as up once its handshake succeeded, not when TCP connects, so a peer
// with another key or none fails the room at PeerTimeout, with the
// handshake's failure in the reason.
//
// # The cuda backend
//
// A room opened with sdk.BackendCUDA is for a hop on one host between two
// instances that hold their buffers on a GPU (Config.CUDA; the phase's
// device = "cuda"). The receiver allocates its buffers in device memory
// (one allocation per room, laid out as in a segment from offset 0) and its
// descriptor carries the allocation's CUDA IPC handle instead of a segment
// name. The sender opens the handle once per room (cuIpcOpenMemHandle,
// which checks the size the descriptor claims against the allocation's),
// and its worker issues one copy per tensor on its stream, from the
// tensor's DevicePtr (device to device) or from its Data (host to device),
// and hands the job to the completer, the goroutine that waits for the
// copies in stream order and then syncs Success as the worker does for the
// other backends; meanwhile the worker issues the next jobs, so that up to
// 64 Sends have copies in flight. Receive checks the Success frame's
// specs and lengths and returns tensors with DevicePtr set and no Data,
// valid until their release func is called; CopyToHost brings one back to
// the host. The bytes are not checksummed: that would take them to the
// host, a round trip over PCIe per hop that costs more than the copy
// itself. The sender closes its mapping when its room is removed, the
// receiver frees its buffers with the last lease. Without -tags cuda,
// Start with Config.CUDA fails with cuda.ErrNoCUDA, and a cuda room on a
// Manager without Config.CUDA is refused with what to set.
//
// # Peers that vanish
//
// Each room's connected PUSH socket (receiver to sender's room socket,
// sender to receiver's status socket) has a libzmq socket monitor whose
// events an inproc PAIR socket brings to the socket owner's poller. A
// disconnect arms a timer of Config.PeerTimeout (default 10 s); a
// reconnect disarms it. If it fires while the room still waits on its
// peer (not terminal, no Success frame yet), the room fails with
// "peer timeout: the <role> at <endpoint> disconnected and did not come
// back within <PeerTimeout>", and a copy in progress stops.
//
// # Limits
//
// A room holds up to four zmq sockets on each side (bound PULL, connected
// PUSH, the two ends of its monitor) and about seven file descriptors;
// with Config.Curve, the Manager holds one more, its ZAP handler.
// Start raises the zmq context's socket limit (ZMQ_MAX_SOCKETS, 1023 by
// default) to the process's file-descriptor limit. An open that hits
// either limit fails with an error wrapping ErrTooManyFiles; other rooms
// are not affected.
//
// Statuses move forward only, one step at a time, or to Failed (see
// Status.CanTransitionTo); Failed always carries a reason.
//
// # Goroutines
//
// Start starts exactly two goroutines (three with Config.CUDA) and Release
// stops them all:
//
//   - the socket owner, the only goroutine that touches a room socket
//     (bind, connect, send, receive, close). It blocks, with no timeout, in
//     epoll on the ZMQ_FD of every socket it reads (PULL sockets, monitor
//     PAIRs, the ZAP handler's ROUTER) and on an eventfd; so a wake-up
//     costs the same with 1,000 rooms open as with none (zmq_poll looks
//     at every socket each time). ZMQ_FD is edge-triggered: a socket is read until EAGAIN, or
//     kept on a pending list when one burst of 64 frames was not enough.
//     Other goroutines post it commands on a channel and write the
//     eventfd. A command that needs an answer carries a reply channel.
//   - the transfer worker, the only goroutine that copies tensor bytes.
//   - with Config.CUDA, the completer, which waits for the device copies
//     the worker issued and finishes their Sends.
//
// There is no goroutine per room, no receive timeout and no sleep in them
// (a Receive verifying a shm room sleeps on its control block in the
// caller's goroutine, woken by the sender or by any change): Remove
// wakes the owner with a command and the worker checks for removal between
// chunks. A peer timer is a time.AfterFunc that posts a command to the
// owner; the owner stops it when the room closes.
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
