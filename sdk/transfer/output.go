package transfer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/phased/phased/sdk/tensor"
)

// Zero-copy hand-off (docs/protocol.md section 5.6).
//
// A phase that writes an output into memory from Manager.Alloc writes it
// into an output segment of its own process: a file in ShmDir named
// phased-<Name>-out-<slot>, mapped read-write by this Manager alone. When
// Send sends that tensor through a fast-path shm room whose receiver
// offers a hand-off table, the worker does not copy it: it lends the
// segment to the receiver. It writes the segment's name, the tensor's
// offset and the segment's size into the receiver's hand-off table, marks
// the segment's slot lent in its lend table, and ends the room as the
// fast path does (checksums, done, one wake-up). With
// Config.VerifyHandoffs it also maps its own view read-only until the
// segment comes back, so that a write to a lent output faults in the
// writer (mprotect costs about 30 µs per MiB on a 2-vCPU VM, more than
// the rest of the hand-off, so it is not the default).
// The receiver opens the segment read-only, maps it read-only, marks the
// slot taken, and Receive returns views of it.
//
// The lend table, phased-<Name>-lends-0, holds one 64-bit word per slot,
// which both sides change only with atomic operations:
//
//	0                 free: the segment is the sender's
//	token<<32 | 1     lent: written by the sender before done
//	token<<32 | 2     taken: the receiver took it (compare-and-swap from lent)
//
// The receiver gives the segment back (taken -> 0) when nothing of its
// room references it any more: the room was removed and every Receive
// lease released; a room removed before Receive took its lends gives them
// back from lent. The sender takes a slot back itself (compare-and-swap
// to 0) when the receiver's process is gone, or when the lend was never
// taken and the receiver's segment was unlinked (the room was removed
// before the sender finished). A segment is reused only when its writer
// freed it (Manager.Free) and its slot is 0.
const (
	lendSlots     = 1024
	lendTableSize = 8 * lendSlots
	// handoffEntry is the size of one entry of a receiver's hand-off
	// table: word (8), offset (8), segment size (8), name (104, NUL
	// padded).
	handoffEntry   = 128
	handoffNameMax = handoffEntry - 24

	lendLent  = 1
	lendTaken = 2
	lendState = 3 // the state bits of a lend word
)

func outputName(name string, slot int) string {
	return "phased-" + name + "-out-" + strconv.Itoa(slot)
}

func lendTableName(name string) string { return "phased-" + name + "-lends-0" }

// parseOutputName splits phased-<NAME>-out-<SLOT>.
func parseOutputName(s string) (owner string, slot int, err error) {
	rest, ok := strings.CutPrefix(s, "phased-")
	i := strings.LastIndex(rest, "-out-")
	if !ok || i <= 0 {
		return "", 0, fmt.Errorf("%q is not an output segment's name (phased-NAME-out-SLOT)", s)
	}
	owner, digits := rest[:i], rest[i+len("-out-"):]
	slot, err = strconv.Atoi(digits)
	if err != nil || !isDigits(digits) || slot >= lendSlots || !nameRE.MatchString(owner) {
		return "", 0, fmt.Errorf("%q is not an output segment's name (phased-NAME-out-SLOT, SLOT below %d)", s, lendSlots)
	}
	return owner, slot, nil
}

// word returns the lend word of slot i of a mapped lend table.
func word(table []byte, i int) *atomic.Uint64 {
	_ = table[8*i+7]
	return (*atomic.Uint64)(unsafe.Pointer(&table[8*i]))
}

// errTableFault is a memory fault on a lend table: a process that maps it
// read-write shrank the file.
var errTableFault = errors.New("memory fault on a lend table (did a process shrink it?)")

// onWord runs f on slot i's word of a lend table that another process may
// have shrunk: a fault (SIGBUS) is errTableFault, not the end of this
// process.
func onWord(table []byte, i int, f func(w *atomic.Uint64)) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			if _, fault := p.(interface{ Addr() uintptr }); !fault {
				panic(p)
			}
			err = errTableFault
		}
	}()
	f(word(table, i))
	return nil
}

// casWord is a compare-and-swap of slot i's word that survives a shrunk
// table (it then reports false).
func casWord(table []byte, i int, old, new uint64) bool {
	ok := false
	_ = onWord(table, i, func(w *atomic.Uint64) { ok = w.CompareAndSwap(old, new) })
	return ok
}

// outSeg is one output segment of a sender. Fields below seg are guarded
// by outputs.mu.
type outSeg struct {
	seg  *segment // its file and read-write mapping
	slot int

	held     bool   // Alloc handed it out and Free has not taken it back
	sum      uint64 // the writer's checksum (Written) of its first sumLen bytes, when summed
	sumLen   int
	summed   bool
	lent     *lend // lent to a receiver until the slot is 0 again
	readOnly bool  // the mapping is read-only (lent with guard)
	freed    uint64
}

// lend is what a sender remembers of one segment it lent.
type lend struct {
	word uint64
	pid  int // the receiver's process, 0 if its name does not say
	peer int // the receiver's segment (a dup), to see it unlinked; -1 if none
}

// outputs is a sender's pool of output segments and its lend table.
type outputs struct {
	dir, name string
	maxBytes  uint64 // bounds of the idle segments kept (the pool's)
	maxSegs   int
	guard     bool // map a lent segment read-only (Config.VerifyHandoffs)

	mu     sync.Mutex
	table  *segment // the lend table, created with the first segment
	slots  []*outSeg
	byData map[*byte]*outSeg
	tick   uint64
	token  uint32
	closed bool
}

func newOutputs(dir, name string, maxBytes uint64, maxSegs int, guard bool) *outputs {
	return &outputs{dir: dir, name: name, maxBytes: maxBytes, maxSegs: maxSegs, guard: guard, byData: make(map[*byte]*outSeg)}
}

// alloc returns a tensor for spec in an output segment: a free one of its
// size class, or a new one. Its bytes are whatever the segment held. A
// spec of no bytes, or no slot or budget left, gets ordinary memory (it
// is copied when sent).
func (o *outputs) alloc(spec tensor.Spec) (tensor.Tensor, error) {
	n, err := spec.NumBytes()
	if err != nil {
		return tensor.Tensor{}, err
	}
	if n == 0 {
		return tensor.New(spec)
	}
	need := uint64(n)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return tensor.Tensor{}, ErrReleased
	}
	// The lend words first; the receivers' processes only when no idle
	// segment fits (a liveness check reads /proc: not on every Alloc).
	o.reclaimLocked(false)
	class := sizeClass(need)
	best := o.fitLocked(need, class)
	if best == nil {
		o.reclaimLocked(true)
		best = o.fitLocked(need, class)
	}
	if best == nil {
		if best, err = o.createLocked(class); err != nil || best == nil {
			if err != nil {
				return tensor.Tensor{}, err
			}
			return tensor.New(spec)
		}
	}
	if best.readOnly {
		if err := unix.Mprotect(best.seg.data, unix.PROT_READ|unix.PROT_WRITE); err != nil {
			return tensor.Tensor{}, fmt.Errorf("map output segment %s writable again: %w", best.seg.name, err)
		}
		best.readOnly = false
	}
	best.held, best.summed = true, false
	return tensor.Tensor{Spec: cloneSpec(spec), Data: best.seg.data[:need:need]}, nil
}

// fitLocked returns the smallest idle segment of at least need bytes
// and at most twice class, or nil.
func (o *outputs) fitLocked(need, class uint64) *outSeg {
	var best *outSeg
	for _, s := range o.slots {
		if s != nil && !s.held && s.lent == nil && s.seg.size >= need && s.seg.size <= 2*class &&
			(best == nil || s.seg.size < best.seg.size) {
			best = s
		}
	}
	return best
}

// createLocked makes a new output segment of size bytes in a free slot,
// unlinking idle ones beyond the pool's bounds first. It returns nil when
// no slot is free or the bounds leave no room.
func (o *outputs) createLocked(size uint64) (*outSeg, error) {
	if o.table == nil {
		t, err := createSegment(o.dir, lendTableName(o.name), lendTableSize)
		if err != nil {
			return nil, fmt.Errorf("create the lend table: %w", err)
		}
		o.table, o.slots = t, make([]*outSeg, lendSlots)
	}
	if o.maxBytes > 0 && size > o.maxBytes {
		return nil, nil
	}
	for {
		idle, bytes := o.idleLocked()
		if len(idle) < o.maxSegs && bytes+size <= o.maxBytes || len(idle) == 0 {
			break
		}
		oldest := idle[0]
		for _, s := range idle {
			if s.freed < oldest.freed {
				oldest = s
			}
		}
		if err := o.destroyLocked(oldest); err != nil {
			return nil, err
		}
	}
	slot := -1
	for i, s := range o.slots {
		if s == nil {
			slot = i
			break
		}
	}
	if slot < 0 {
		return nil, nil
	}
	seg, err := createSegment(o.dir, outputName(o.name, slot), size)
	if err != nil {
		return nil, fmt.Errorf("create an output segment: %w", err)
	}
	s := &outSeg{seg: seg, slot: slot}
	o.slots[slot] = s
	o.byData[&seg.data[0]] = s
	return s, nil
}

// idleLocked returns the segments neither held nor lent, and their bytes.
func (o *outputs) idleLocked() ([]*outSeg, uint64) {
	var idle []*outSeg
	var n uint64
	for _, s := range o.slots {
		if s != nil && !s.held && s.lent == nil {
			idle = append(idle, s)
			n += s.seg.size
		}
	}
	return idle, n
}

func (o *outputs) destroyLocked(s *outSeg) error {
	o.slots[s.slot] = nil
	delete(o.byData, &s.seg.data[0])
	return s.seg.destroy()
}

// reclaimLocked takes back the slots the receivers gave back, and those of
// receivers that will never give them back (see the comment at the top);
// those of receivers whose process is gone only with alive.
func (o *outputs) reclaimLocked(alive bool) {
	for _, s := range o.slots {
		if s == nil || s.lent == nil {
			continue
		}
		l := s.lent
		var cur uint64
		if onWord(o.table.data, s.slot, func(w *atomic.Uint64) { cur = w.Load() }) != nil {
			continue // the table was shrunk: the slot stays lent
		}
		switch {
		case cur == 0:
		case cur == l.word && peerUnlinked(l.peer):
			if !casWord(o.table.data, s.slot, cur, 0) {
				continue
			}
		case alive && (cur == l.word || cur == l.word+1) && l.pid > 0 && !ProcessAlive(l.pid):
			if !casWord(o.table.data, s.slot, cur, 0) {
				continue
			}
		default:
			continue
		}
		if l.peer >= 0 {
			_ = unix.Close(l.peer)
		}
		s.lent = nil
		if !s.held {
			o.tick++
			s.freed = o.tick
		}
	}
}

// peerUnlinked reports whether the receiver segment fd refers to was
// unlinked.
func peerUnlinked(fd int) bool { return fd >= 0 && unlinked(fd) }

// ProcessAlive reports whether pid runs: it exists and is not a zombie
// (a process that exited and that whoever adopted it has not reaped yet).
func ProcessAlive(pid int) bool {
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) STATE ...: comm may hold spaces and parentheses.
	rest := strings.TrimSpace(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return !strings.HasPrefix(rest, "Z")
}

// free gives back an Alloc'd tensor: the segment is reused once the
// receiver it was lent to, if any, gave it back. Other memory is ignored.
func (o *outputs) free(t tensor.Tensor) {
	if len(t.Data) == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.byData[&t.Data[0]]
	if s == nil || !s.held {
		return
	}
	s.held = false
	if o.closed { // kept mapped by close for its writer: now it can go
		delete(o.byData, &s.seg.data[0])
		_ = s.seg.unmap()
		return
	}
	if s.lent == nil {
		o.tick++
		s.freed = o.tick
	}
}

// written records the checksum of an Alloc'd tensor that its writer
// computed while writing it. Other memory (ordinary memory that Alloc
// fell back to, or not from Alloc at all) is ignored: it is copied, and
// hashed while copied.
func (o *outputs) written(t tensor.Tensor, sum uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(t.Data) == 0 {
		return nil
	}
	s := o.byData[&t.Data[0]]
	switch {
	case s == nil:
		return nil
	case !s.held || s.lent != nil:
		return errors.New("transfer: written: the output was freed or sent already")
	}
	s.sum, s.sumLen, s.summed = sum, len(t.Data), true
	return nil
}

// lendable returns, per tensor, its output segment when it can be lent:
// an Alloc'd tensor still held, not lent, starting at its segment's start.
// The same segment is lent once.
func (o *outputs) lendable(ts []tensor.Tensor) []*outSeg {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []*outSeg
	for i, t := range ts {
		if len(t.Data) == 0 {
			continue
		}
		s := o.byData[&t.Data[0]]
		if s == nil || !s.held || s.lent != nil || slices.Contains(out, s) {
			continue
		}
		if out == nil {
			out = make([]*outSeg, len(ts))
		}
		out[i] = s
	}
	return out
}

// checksum returns the writer's checksum of data, the first bytes of s,
// if it gave one for exactly these bytes, or hashes them (once, after the
// writer wrote them).
func (o *outputs) checksum(s *outSeg, data []byte) uint64 {
	o.mu.Lock()
	sum, ok := s.sum, s.summed && s.sumLen == len(data)
	o.mu.Unlock()
	if ok {
		return sum
	}
	return tensor.Checksum(data)
}

// nextWord returns the lend word of a new lend.
func (o *outputs) nextWord() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.token++
	return uint64(o.token)<<32 | lendLent
}

// lend marks s lent to the receiver with w (before the receiver can see
// done); with guard it maps the sender's view read-only, so that nothing
// in this process writes it while the receiver reads it. peer (a dup of
// the receiver's segment, or -1) becomes the lend's.
func (o *outputs) lend(s *outSeg, w uint64, pid, peer int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.guard {
		if err := unix.Mprotect(s.seg.data, unix.PROT_READ); err != nil {
			if peer >= 0 {
				_ = unix.Close(peer)
			}
			return fmt.Errorf("map output segment %s read-only: %w", s.seg.name, err)
		}
		s.readOnly = true
	}
	if err := onWord(o.table.data, s.slot, func(x *atomic.Uint64) { x.Store(w) }); err != nil {
		if peer >= 0 {
			_ = unix.Close(peer)
		}
		return err
	}
	s.lent = &lend{word: w, pid: pid, peer: peer}
	return nil
}

// unlend takes back a lend that the receiver cannot have seen (done was
// not set).
func (o *outputs) unlend(s *outSeg) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if s.lent == nil {
		return
	}
	casWord(o.table.data, s.slot, s.lent.word, 0)
	if s.lent.peer >= 0 {
		_ = unix.Close(s.lent.peer)
	}
	s.lent = nil
}

// counts returns the segments held, lent and idle (for tests and metrics).
func (o *outputs) counts() (held, lent, idle int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reclaimLocked(true)
	for _, s := range o.slots {
		switch {
		case s == nil:
		case s.lent != nil:
			lent++
		case s.held:
			held++
		default:
			idle++
		}
	}
	return held, lent, idle
}

// close unlinks every output segment and the lend table, and unmaps them,
// but for the segments a writer still holds (a Run that did not stop when
// asked): those stay mapped until Free. A receiver that still maps one
// keeps its bytes until it lets go.
func (o *outputs) close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	var errs []error
	for _, s := range o.slots {
		if s == nil {
			continue
		}
		if s.lent != nil && s.lent.peer >= 0 {
			errs = append(errs, closeFd(s.lent.peer))
		}
		o.slots[s.slot] = nil
		if s.held {
			errs = append(errs, s.seg.unlink())
			continue
		}
		delete(o.byData, &s.seg.data[0])
		errs = append(errs, s.seg.destroy())
	}
	if o.table != nil {
		errs = append(errs, o.table.destroy())
		o.table = nil
	}
	return errors.Join(errs...)
}

// putHandoff writes the hand-off entry of a lent segment into a
// receiver's table.
func putHandoff(dst []byte, w, offset, size uint64, name string) (err error) {
	defer recoverFault(&err)
	var e [handoffEntry]byte
	binary.LittleEndian.PutUint64(e[0:], w)
	binary.LittleEndian.PutUint64(e[8:], offset)
	binary.LittleEndian.PutUint64(e[16:], size)
	copy(e[24:], name)
	copy(dst[:handoffEntry], e[:])
	return nil
}

// handoffOf reads entry i of a receiver's hand-off table.
func handoffOf(table []byte, i int) (w, offset, size uint64, name string) {
	e := table[handoffEntry*i : handoffEntry*(i+1)]
	w = binary.LittleEndian.Uint64(e[0:])
	offset = binary.LittleEndian.Uint64(e[8:])
	size = binary.LittleEndian.Uint64(e[16:])
	n := e[24:]
	if i := bytes.IndexByte(n, 0); i >= 0 {
		n = n[:i]
	}
	return w, offset, size, string(n)
}

// taken is one output segment a receiver room took.
type taken struct {
	buf   int // the buffer it stands for
	view  []byte
	seg   *peerMap // the output segment, read-only
	table *peerMap // its sender's lend table
	slot  int
	word  uint64 // the taken word
}

// takeHandoffs reads a fast-path room's hand-off table once its sender is
// done (data is the room's segment) and takes every segment lent there:
// it opens and maps each read-only, checks it, and marks its slot taken.
// On an error it gives back what it took and returns the error, naming
// the tensor.
func (m *Manager) takeHandoffs(bufs []buffer, data []byte, at uint64) (ts []taken, err error) {
	defer func() {
		if err != nil {
			m.giveBack(ts)
			ts = nil
		}
	}()
	table := data[at:]
	for i, b := range bufs {
		w, off, size, name := handoffOf(table, i)
		if w == 0 {
			continue
		}
		t, err := m.takeOne(b, w, off, size, name)
		if err != nil {
			return ts, fmt.Errorf("hand-off: tensor %d %q: %w", i, b.spec.Name, err)
		}
		t.buf = i
		ts = append(ts, t)
	}
	return ts, nil
}

func (m *Manager) takeOne(b buffer, w, off, size uint64, name string) (taken, error) {
	if w&lendState != lendLent {
		return taken{}, fmt.Errorf("the entry's word %#x is not a lent one", w)
	}
	owner, slot, err := parseOutputName(name)
	if err != nil {
		return taken{}, err
	}
	if off%alignment != 0 || off > size || b.length > size-off {
		return taken{}, fmt.Errorf("offset %d + length %d is out of bounds of the %d-byte segment %s (or not %d-byte aligned)", off, b.length, size, name, alignment)
	}
	seg, err := m.peers.get(m.cfg.ShmDir, name, size, false)
	if err != nil {
		return taken{}, err
	}
	table, err := m.peers.get(m.cfg.ShmDir, lendTableName(owner), lendTableSize, true)
	if err != nil {
		m.peers.put(seg)
		return taken{}, err
	}
	if !casWord(table.data, slot, w, w-lendLent+lendTaken) {
		m.peers.put(seg)
		m.peers.put(table)
		return taken{}, fmt.Errorf("the sender took segment %s back (its lend word is no longer %#x)", name, w)
	}
	return taken{view: seg.data[off : off+b.length : off+b.length], seg: seg, table: table, slot: slot, word: w - lendLent + lendTaken}, nil
}

// giveBack gives taken segments back to their sender. (Mappings of files
// that went meanwhile are dropped by put, or at the next room removal.)
func (m *Manager) giveBack(ts []taken) {
	for _, t := range ts {
		casWord(t.table.data, t.slot, t.word, 0)
		m.peers.put(t.seg)
		m.peers.put(t.table)
	}
}

// giveBackUntaken gives back the segments lent to a room that no Receive
// took (the room is being removed after its sender set done). It reports
// false if it could not reach a lend table: the caller then unlinks the
// room's segment, which tells the sender to take the slot back itself.
func (m *Manager) giveBackUntaken(bufs []buffer, data []byte, at uint64) bool {
	ok := true
	for i := range bufs {
		w, _, _, name := handoffOf(data[at:], i)
		if w == 0 || w&lendState != lendLent {
			continue
		}
		owner, slot, err := parseOutputName(name)
		if err != nil {
			continue // no sender can have lent it
		}
		table, err := m.peers.get(m.cfg.ShmDir, lendTableName(owner), lendTableSize, true)
		if err != nil {
			ok = false
			continue
		}
		casWord(table.data, slot, w, 0)
		m.peers.put(table)
	}
	return ok
}

// peerMaps are a receiver's mappings of its senders' output segments
// (read-only) and lend tables (read-write), shared by its rooms and kept
// while referenced, or while their file exists (a sender reuses its
// segments), within bounds.
type peerMaps struct {
	mu       sync.Mutex
	entries  []*peerMap
	bytes    uint64
	maxSegs  int
	maxBytes uint64
	closed   bool
}

type peerMap struct {
	dev, ino, size uint64
	writable       bool
	fd             int
	data           []byte
	refs           int
}

// get maps dir/name (read-only, or read-write for a lend table) and takes
// a reference. The file must be a regular file, no symlink followed, of
// exactly size bytes.
func (p *peerMaps) get(dir, name string, size uint64, writable bool) (*peerMap, error) {
	if !segmentNameRE.MatchString(name) || len(name) > 255 {
		return nil, fmt.Errorf("bad segment name %q", name)
	}
	if size == 0 || size > maxSegmentSize {
		return nil, fmt.Errorf("segment %s: size %d is out of range", name, size)
	}
	flags, prot := unix.O_RDONLY, unix.PROT_READ
	if writable {
		flags, prot = unix.O_RDWR, unix.PROT_READ|unix.PROT_WRITE
	}
	fd, st, err := openSegmentFile(dir, name, size, flags, "the hand-off")
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	for _, e := range p.entries {
		if e.dev == uint64(st.Dev) && e.ino == uint64(st.Ino) && e.size == size && e.writable == writable {
			e.refs++
			p.mu.Unlock()
			return e, closeFd(fd)
		}
	}
	p.mu.Unlock()
	data, err := unix.Mmap(fd, 0, int(size), prot, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("map segment %s: %w", filepath.Join(dir, name), fdErr(err)), closeFd(fd))
	}
	e := &peerMap{dev: uint64(st.Dev), ino: uint64(st.Ino), size: size, writable: writable, fd: fd, data: data, refs: 1}
	p.mu.Lock()
	p.entries = append(p.entries, e)
	p.bytes += size
	p.mu.Unlock()
	return e, nil
}

// put drops a reference. An entry nobody references goes at once if its
// file was unlinked or the maps are closed; others are unmapped while
// the maps exceed their bounds.
func (p *peerMaps) put(e *peerMap) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.refs--
	if e.refs == 0 && (p.closed || unlinked(e.fd)) {
		p.dropLocked(e)
	}
	if len(p.entries) <= p.maxSegs && p.bytes <= p.maxBytes {
		return
	}
	for _, x := range slices.Clone(p.entries) {
		if len(p.entries) <= p.maxSegs && p.bytes <= p.maxBytes {
			break
		}
		if x.refs == 0 {
			p.dropLocked(x)
		}
	}
}

func unlinked(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) != nil || st.Nlink == 0
}

func (p *peerMaps) dropLocked(e *peerMap) {
	i := slices.Index(p.entries, e)
	if i < 0 {
		return
	}
	p.entries = slices.Delete(p.entries, i, i+1)
	p.bytes -= e.size
	_ = unix.Munmap(e.data)
	_ = unix.Close(e.fd)
}

// sweep unmaps every unreferenced mapping whose file was unlinked (all of
// them once closed).
func (p *peerMaps) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range slices.Clone(p.entries) {
		if e.refs == 0 && (p.closed || unlinked(e.fd)) {
			p.dropLocked(e)
		}
	}
}

// close unmaps every unreferenced mapping now and the others when their
// last reference goes.
func (p *peerMaps) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.sweep()
}

// mapped returns how many peer segments are mapped (for tests).
func (p *peerMaps) mapped() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.entries)
}
