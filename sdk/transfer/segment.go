package transfer

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/phased/phased/sdk/tensor"
)

// alignment is the alignment of every buffer's offset in a segment.
const alignment = 64

// maxSegmentSize bounds a segment a sender agrees to map (16 TiB).
const maxSegmentSize = 1 << 44

// segmentNameRE is what a segment name in a descriptor must look like: one
// path element (no '/'), so it cannot escape ShmDir.
var segmentNameRE = regexp.MustCompile(`^phased-[A-Za-z0-9_.-]+$`)

// buffer is where one tensor lives in a segment.
type buffer struct {
	spec   tensor.Spec
	offset uint64
	length uint64
}

// layout places one buffer per spec, consecutively from base (ctrlSize in
// a shm segment, after its control block; 0 in a zmq room's memory), each
// offset aligned to alignment, and returns the buffers and the bytes the
// segment needs (at least one alignment unit, so that it can be mapped).
func layout(specs []tensor.Spec, base uint64) ([]buffer, uint64, error) {
	bufs := make([]buffer, len(specs))
	off := base
	for i, s := range specs {
		n, err := s.NumBytes()
		if err != nil {
			return nil, 0, err
		}
		bufs[i] = buffer{spec: cloneSpec(s), offset: off, length: uint64(n)}
		off = alignUp(off + uint64(n))
		if off > maxSegmentSize {
			return nil, 0, fmt.Errorf("inputs need more than %d bytes", uint64(maxSegmentSize))
		}
	}
	return bufs, max(off, alignment), nil
}

// shmLayout lays out a shm room: the control block, the buffers, after
// them the fast path's checksum table (8 bytes per buffer), and after
// that, 64-byte aligned, the hand-off table (handoffEntry bytes per
// buffer, see output.go). It returns the buffers, the tables' offsets and
// the bytes the segment needs.
func shmLayout(specs []tensor.Spec) (bufs []buffer, at tables, need uint64, err error) {
	bufs, at.sums, err = layout(specs, ctrlSize)
	if err != nil {
		return nil, at, 0, err
	}
	n := uint64(len(bufs))
	at.handoffs = alignUp(at.sums + 8*n)
	need = at.handoffs + handoffEntry*n
	if need > maxSegmentSize {
		return nil, at, 0, fmt.Errorf("inputs need more than %d bytes", uint64(maxSegmentSize))
	}
	return bufs, at, need, nil
}

// tables are where a shm room's segment holds the fast path's checksum
// table and the hand-off table.
type tables struct{ sums, handoffs uint64 }

func alignUp(n uint64) uint64 { return (n + alignment - 1) &^ (alignment - 1) }

func cloneSpec(s tensor.Spec) tensor.Spec {
	s.Shape = append([]int64(nil), s.Shape...)
	return s
}

// Size classes of pooled segments: a power of two from one page up to
// 2 MiB, then a multiple of 2 MiB. A free segment serves a room whose
// inputs need n bytes if n <= size <= 2*sizeClass(n), so a small room
// never pins a large segment.
const (
	pageSize  = 4 << 10
	hugeClass = 2 << 20
)

func sizeClass(n uint64) uint64 {
	switch {
	case n <= pageSize:
		return pageSize
	case n <= hugeClass:
		return 1 << bits.Len64(n-1)
	}
	return (n + hugeClass - 1) &^ (hugeClass - 1)
}

// segment is a receiver's shared-memory segment: a file in ShmDir mapped
// MAP_SHARED for the segment's whole life. A room holds one reference and
// each Receive lease one more. When its room is removed, a segment is
// either recycled into the Manager's pool (no lease outstanding, and the
// sender is known to be done with it) or unlinked at once and unmapped
// with its last reference.
type segment struct {
	// name, path and size change only while no room holds the segment.
	name string
	path string
	size uint64
	data []byte
	heap bool      // data is Go memory (a zmq room's): nothing to unmap
	dev  gpuBuffer // device memory (a cuda room's) instead of data: freed, not unmapped

	mu      sync.Mutex
	refs    int
	retired bool // the room let go: no new reference can be taken
	// idle, when set, runs once when the last reference of a retired
	// segment is dropped, before the segment is unmapped or recycled: a
	// receiver room gives back the output segments it was lent.
	idle func()
}

// onIdle sets the function run when nothing references the segment any
// more (see idle).
func (s *segment) onIdle(f func()) {
	s.mu.Lock()
	s.idle = f
	s.mu.Unlock()
}

// takeIdleLocked returns and clears idle. s.mu is held.
func (s *segment) takeIdleLocked() func() {
	f := s.idle
	s.idle = nil
	if f == nil {
		return func() {}
	}
	return f
}

// privateSegment allocates size bytes, 64-byte aligned: the receiver's
// buffers of a zmq room, which only its own socket owner writes. It has no
// file and never goes back to the pool. Up to maxHeapSegment it is Go
// memory, which the allocator reuses, so its pages are warm (a fresh page
// costs a fault each); larger ones are anonymous mappings, so that a size
// the host cannot hold fails here with an error rather than ending the
// process. The caller holds its single reference.
func privateSegment(size uint64) (*segment, error) {
	if size > maxHeapSegment {
		data, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, fmt.Errorf("allocate %d bytes of buffers: %w", size, err)
		}
		return &segment{size: size, data: data, refs: 1}, nil
	}
	raw := make([]byte, size+alignment)
	off := (alignment - uintptr(unsafe.Pointer(&raw[0]))%alignment) % alignment
	return &segment{size: size, data: raw[off : uint64(off)+size : uint64(off)+size], heap: true, refs: 1}, nil
}

// maxHeapSegment is the largest zmq receive buffer taken from Go memory.
const maxHeapSegment = 1 << 30

// createSegment creates, sizes and maps a new segment. The caller holds its
// single reference.
func createSegment(dir, name string, size uint64) (seg *segment, err error) {
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create segment %s: %w", path, fdErr(err))
	}
	defer func() {
		err = errors.Join(err, closeFd(fd))
		if err != nil {
			if seg != nil {
				err = errors.Join(err, seg.destroy())
			} else {
				_ = unix.Unlink(path)
			}
			seg = nil
		}
	}()
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return nil, fmt.Errorf("size segment %s to %d bytes: %w", path, size, err)
	}
	// Reserve the pages now, so that a full ShmDir fails here and not with
	// SIGBUS in the sender.
	if err := unix.Fallocate(fd, 0, 0, int64(size)); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		return nil, fmt.Errorf("allocate segment %s (%d bytes): %w", path, size, err)
	}
	data, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map segment %s: %w", path, fdErr(err))
	}
	return &segment{name: name, path: path, size: size, data: data, refs: 1}, nil
}

// acquire takes a reference and returns the mapping, valid until the
// matching release; it fails once the room let go of the segment.
func (s *segment) acquire() ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retired {
		return nil, false
	}
	s.refs++
	return s.data, true
}

// release drops a lease's reference; the last one of a retired segment
// unmaps it (a recycled segment has no lease left, see retire).
func (s *segment) release() error {
	s.mu.Lock()
	if s.refs == 0 {
		s.mu.Unlock()
		return nil
	}
	s.refs--
	last := s.refs == 0 && s.retired
	idle := func() {}
	if last {
		idle = s.takeIdleLocked()
	}
	s.mu.Unlock()
	if last {
		idle()
		return s.unmap()
	}
	return nil
}

// retire drops the room's reference. If recyclable and no lease is
// outstanding, it reports true and the caller owns the segment (mapped,
// file in place) to put into the pool. Otherwise it unlinks the file now
// and the last reference unmaps it.
func (s *segment) retire(recyclable bool) (recycled bool, err error) {
	s.mu.Lock()
	s.retired = true
	s.refs--
	refs := s.refs
	idle := func() {}
	if refs == 0 {
		idle = s.takeIdleLocked()
	}
	s.mu.Unlock()
	idle()
	// Only shared-memory segments go back to the pool; private memory (a
	// zmq room's) has no file to hand to the next room.
	if refs == 0 && recyclable && s.path != "" {
		return true, nil
	}
	err = s.unlink()
	if refs == 0 {
		err = errors.Join(err, s.unmap())
	}
	return false, err
}

// destroy unlinks and unmaps a segment that no one else references.
func (s *segment) destroy() error { return errors.Join(s.unlink(), s.unmap()) }

func (s *segment) unlink() error {
	if s.path == "" {
		return nil // private memory: no file
	}
	if err := unix.Unlink(s.path); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unlink segment %s: %w", s.path, err)
	}
	return nil
}

func (s *segment) unmap() error {
	if s.dev != nil {
		dev := s.dev
		s.dev = nil
		if err := dev.Free(); err != nil {
			return fmt.Errorf("free device buffers: %w", err)
		}
		return nil
	}
	if s.data == nil {
		return nil
	}
	data := s.data
	s.data = nil
	if s.heap {
		return nil
	}
	if err := unix.Munmap(data); err != nil {
		return fmt.Errorf("unmap segment %s: %w", s.path, err)
	}
	return nil
}

// rename moves the segment's file to name in the same directory; it never
// replaces an existing file.
func (s *segment) rename(name string) error {
	path := filepath.Join(filepath.Dir(s.path), name)
	if err := unix.Renameat2(unix.AT_FDCWD, s.path, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("rename segment %s to %s: %w", s.path, name, err)
	}
	s.name, s.path = name, path
	return nil
}

// pool keeps a receiver's idle segments, mapped, for the next rooms: a
// fresh segment costs a page fault per page on both sides (about 5 µs
// each on a VM), a reused one none. Idle segments are named
// phased-<name>-free-<n>, a name no descriptor can carry (descriptor names
// end in -<room>-<generation>), and renamed to the new room's name when
// handed out. The pool holds at most maxSegs segments and maxBytes bytes;
// the least recently freed ones are unlinked first.
type pool struct {
	dir      string
	prefix   string // "phased-<name>-"
	maxBytes uint64
	maxSegs  int
	nextID   func() uint64

	mu     sync.Mutex
	free   []*segment // least recently freed first
	bytes  uint64
	closed bool
}

func newPool(dir, name string, maxBytes uint64, maxSegs int, nextID func() uint64) *pool {
	return &pool{dir: dir, prefix: "phased-" + name + "-", maxBytes: maxBytes, maxSegs: maxSegs, nextID: nextID}
}

func (p *pool) freeName() string {
	return p.prefix + "free-" + strconv.FormatUint(p.nextID(), 10)
}

// get returns a segment of at least need bytes named name, with one
// reference, and whether it was reused.
func (p *pool) get(name string, need uint64) (*segment, bool, error) {
	class := sizeClass(need)
	p.mu.Lock()
	best := -1
	if !p.closed {
		for i, s := range p.free {
			if s.size >= need && s.size <= 2*class && (best < 0 || s.size < p.free[best].size) {
				best = i
			}
		}
	}
	var s *segment
	if best >= 0 {
		s = p.free[best]
		p.free = append(p.free[:best], p.free[best+1:]...)
		p.bytes -= s.size
	}
	p.mu.Unlock()
	var err error
	if s != nil {
		if err = s.rename(name); err == nil {
			s.refs, s.retired = 1, false
			return s, true, nil
		}
		err = errors.Join(err, s.destroy())
	}
	s, cerr := createSegment(p.dir, name, class)
	return s, false, errors.Join(cerr, err)
}

// put takes a retired segment back: it renames it to a free name and
// evicts the least recently freed segments beyond the bounds.
func (p *pool) put(s *segment) error {
	if err := s.rename(p.freeName()); err != nil {
		return errors.Join(err, s.destroy())
	}
	p.mu.Lock()
	var evict []*segment
	if p.closed || s.size > p.maxBytes || p.maxSegs <= 0 {
		evict = append(evict, s)
	} else {
		p.free = append(p.free, s)
		p.bytes += s.size
		for len(p.free) > p.maxSegs || p.bytes > p.maxBytes {
			evict = append(evict, p.free[0])
			p.bytes -= p.free[0].size
			p.free = p.free[1:]
		}
	}
	p.mu.Unlock()
	var errs []error
	for _, e := range evict {
		errs = append(errs, e.destroy())
	}
	return errors.Join(errs...)
}

// close destroys every idle segment; later puts destroy theirs.
func (p *pool) close() error {
	p.mu.Lock()
	free := p.free
	p.free, p.bytes, p.closed = nil, 0, true
	p.mu.Unlock()
	var errs []error
	for _, s := range free {
		errs = append(errs, s.destroy())
	}
	return errors.Join(errs...)
}

// idle returns the number and bytes of idle segments.
func (p *pool) idle() (int, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free), p.bytes
}

// openPeerSegment opens, read-write, the segment a descriptor names and
// checks it. The name was checked against segmentNameRE, so path stays in
// dir; the file must be a regular file (no symlink followed) of exactly
// size bytes. The caller closes fd.
func openPeerSegment(dir, name string, size uint64) (fd int, st unix.Stat_t, err error) {
	return openSegmentFile(dir, name, size, unix.O_RDWR, "the descriptor")
}

// openSegmentFile opens dir/name, a segment another process made, with
// flags (O_RDWR or O_RDONLY) and checks it: a name that stays in dir, a
// regular file (no symlink followed) of exactly size bytes, the size
// that who (the descriptor, the hand-off) says.
func openSegmentFile(dir, name string, size uint64, flags int, who string) (fd int, st unix.Stat_t, err error) {
	if !segmentNameRE.MatchString(name) {
		return -1, st, fmt.Errorf("bad segment name %q", name)
	}
	path := filepath.Join(dir, name)
	fd, err = unix.Open(path, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, st, fmt.Errorf("open segment %s: %w", path, fdErr(err))
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return -1, st, errors.Join(fmt.Errorf("stat segment %s: %w", path, err), closeFd(fd))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1, st, errors.Join(fmt.Errorf("segment %s is not a regular file", path), closeFd(fd))
	}
	if st.Size < 0 || uint64(st.Size) != size {
		return -1, st, errors.Join(fmt.Errorf("segment %s is %d bytes, %s says %d", path, st.Size, who, size), closeFd(fd))
	}
	return fd, st, nil
}

// peerFile is a receiver's segment opened by a sender (openPeerSegment).
type peerFile struct {
	fd int
	st unix.Stat_t
}

func openPeerFile(dir, name string, size uint64) (*peerFile, error) {
	fd, st, err := openPeerSegment(dir, name, size)
	if err != nil {
		return nil, err
	}
	return &peerFile{fd: fd, st: st}, nil
}

// mapPeerSegment opens and maps, read-write, the segment a descriptor
// names (see openPeerSegment), without caching. The caller unmaps it.
func mapPeerSegment(dir, name string, size uint64) (data []byte, err error) {
	fd, _, err := openPeerSegment(dir, name, size)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, closeFd(fd)) }()
	data, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map segment %s: %w", name, fdErr(err))
	}
	return data, nil
}

// The sender's mapping cache holds at most this many receiver segments
// and bytes.
const (
	mapCacheSegments = 64
	mapCacheBytes    = 4 << 30
)

// mapping is one receiver segment the sender keeps mapped. fd stays open
// so that the cache notices when the receiver unlinks the file (nlink 0).
type mapping struct {
	dev, ino uint64
	size     uint64
	fd       int
	data     []byte
	lastUse  uint64
}

func (mp *mapping) close() error {
	return errors.Join(unmapErr(mp.data), closeFd(mp.fd))
}

func unmapErr(data []byte) error {
	if err := unix.Munmap(data); err != nil {
		return fmt.Errorf("unmap segment: %w", err)
	}
	return nil
}

// mapCache is the transfer worker's cache of receiver segments, keyed by
// the file's identity (device and inode), so that a segment the receiver
// reuses for a new room (renamed) is mapped once. Only the worker
// goroutine uses it.
//
// Every lookup is of a file opened by the descriptor's name with
// O_NOFOLLOW and checked for type and size (openPeerSegment), when the
// descriptor arrived or for the job, so the name-to-file binding is
// checked per room. (A file opened when the descriptor arrived cannot have
// become another room's by the job: a receiver reuses a segment only once
// the sender is done with it, and unlinks it otherwise.) An entry goes
// away when its file is unlinked (checked after every job), when the same
// file shows another size, after a memory fault in it, on eviction (least
// recently used beyond the bounds) and on Release.
type mapCache struct {
	maxSegs  int
	maxBytes uint64
	entries  []*mapping
	bytes    uint64
	tick     uint64
}

// get returns a mapping of the segment and its open file, both valid
// until done is called. done with bad set drops the entry (after a
// fault). It takes f, the segment's file if it was opened already (the
// cache keeps or closes it), or opens dir/name.
func (c *mapCache) get(dir, name string, size uint64, f *peerFile) (data []byte, file int, done func(bad bool) error, err error) {
	if f == nil {
		if f, err = openPeerFile(dir, name, size); err != nil {
			return nil, -1, nil, err
		}
	}
	fd, st := f.fd, f.st
	dev, ino := uint64(st.Dev), uint64(st.Ino)
	for i, e := range c.entries {
		if e.dev != dev || e.ino != ino {
			continue
		}
		if e.size == size {
			c.tick++
			e.lastUse = c.tick
			return e.data, e.fd, c.doneFunc(e), closeFd(fd)
		}
		c.drop(i) // the same file with another size: map it again
		break
	}
	data, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, -1, nil, errors.Join(fmt.Errorf("map segment %s: %w", name, fdErr(err)), closeFd(fd))
	}
	if size > c.maxBytes || c.maxSegs <= 0 {
		return data, fd, func(bool) error { return errors.Join(unmapErr(data), closeFd(fd)) }, nil
	}
	c.tick++
	e := &mapping{dev: dev, ino: ino, size: size, fd: fd, data: data, lastUse: c.tick}
	c.entries = append(c.entries, e)
	c.bytes += size
	for len(c.entries) > c.maxSegs || c.bytes > c.maxBytes {
		oldest := 0
		for i, x := range c.entries {
			if x.lastUse < c.entries[oldest].lastUse {
				oldest = i
			}
		}
		if c.entries[oldest] == e {
			break // cannot happen: e fits and is the newest
		}
		err = errors.Join(err, c.drop(oldest))
	}
	return data, fd, c.doneFunc(e), err
}

func (c *mapCache) doneFunc(e *mapping) func(bad bool) error {
	return func(bad bool) error {
		if !bad {
			return nil
		}
		if i := slices.Index(c.entries, e); i >= 0 {
			return c.drop(i)
		}
		return nil
	}
}

func (c *mapCache) drop(i int) error {
	e := c.entries[i]
	c.entries = append(c.entries[:i], c.entries[i+1:]...)
	c.bytes -= e.size
	return e.close()
}

// sweep drops the mappings of files that were unlinked.
func (c *mapCache) sweep() {
	for i := 0; i < len(c.entries); {
		if unlinked(c.entries[i].fd) {
			_ = c.drop(i)
			continue
		}
		i++
	}
}

// close unmaps everything.
func (c *mapCache) close() error {
	var errs []error
	for len(c.entries) > 0 {
		errs = append(errs, c.drop(len(c.entries)-1))
	}
	return errors.Join(errs...)
}

func closeFd(fd int) error {
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close fd %d: %w", fd, err)
	}
	return nil
}

// SweepSegments removes the shared-memory segments that a Manager named
// name left in shmDir ("" means DefaultShmDir), for a process that died
// without releasing. It returns how many it removed.
func SweepSegments(shmDir, name string) (int, error) {
	if !nameRE.MatchString(name) {
		return 0, fmt.Errorf("transfer: sweep: name %q must match %s", name, nameRE)
	}
	if shmDir == "" {
		shmDir = DefaultShmDir
	}
	entries, err := os.ReadDir(shmDir)
	if err != nil {
		return 0, fmt.Errorf("transfer: sweep: %w", err)
	}
	n := 0
	var errs []error
	for _, e := range entries {
		if owner, ok := SegmentOwner(e.Name()); ok && owner == name && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(shmDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}
