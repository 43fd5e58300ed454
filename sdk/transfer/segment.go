package transfer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

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

// layout places one buffer per spec, consecutively, each offset aligned to
// alignment, and returns the buffers and the segment size (at least one
// alignment unit, so that it can be mapped).
func layout(specs []tensor.Spec) ([]buffer, uint64, error) {
	bufs := make([]buffer, len(specs))
	var off uint64
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

func alignUp(n uint64) uint64 { return (n + alignment - 1) &^ (alignment - 1) }

func cloneSpec(s tensor.Spec) tensor.Spec {
	s.Shape = append([]int64(nil), s.Shape...)
	return s
}

// segment is a receiver's shared-memory segment: a file in ShmDir mapped
// MAP_SHARED. It is counted: the room holds one reference and each
// Receive lease one more; the mapping goes away with the last one.
type segment struct {
	name string
	path string

	mu       sync.Mutex
	data     []byte // nil once unmapped
	refs     int
	unlinked bool
}

// createSegment creates, sizes and maps a new segment. The caller holds its
// single reference.
func createSegment(dir, name string, size uint64) (seg *segment, err error) {
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create segment %s: %w", path, err)
	}
	defer func() {
		err = errors.Join(err, closeFd(fd))
		if err != nil {
			if seg != nil {
				err = errors.Join(err, seg.release())
			}
			_ = unix.Unlink(path)
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
		return nil, fmt.Errorf("map segment %s: %w", path, err)
	}
	return &segment{name: name, path: path, data: data, refs: 1}, nil
}

// acquire takes a reference and returns the mapping, valid until the
// matching release; it fails once the mapping is gone.
func (s *segment) acquire() ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.data == nil {
		return nil, false
	}
	s.refs++
	return s.data, true
}

// release drops a reference and unmaps the segment with the last one.
func (s *segment) release() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs == 0 {
		return nil
	}
	s.refs--
	if s.refs > 0 {
		return nil
	}
	data := s.data
	s.data = nil
	if err := unix.Munmap(data); err != nil {
		return fmt.Errorf("unmap segment %s: %w", s.path, err)
	}
	return nil
}

// unlink removes the segment's file; the mapping is unaffected.
func (s *segment) unlink() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unlinked {
		return nil
	}
	s.unlinked = true
	if err := unix.Unlink(s.path); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unlink segment %s: %w", s.path, err)
	}
	return nil
}

// mapPeerSegment opens and maps, read-write, the segment a descriptor names.
// The name was checked against segmentNameRE, so path stays in dir; the file
// must be a regular file (no symlink followed) of exactly size bytes.
func mapPeerSegment(dir, name string, size uint64) (data []byte, err error) {
	if !segmentNameRE.MatchString(name) {
		return nil, fmt.Errorf("bad segment name %q", name)
	}
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open segment %s: %w", path, err)
	}
	defer func() { err = errors.Join(err, closeFd(fd)) }()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat segment %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("segment %s is not a regular file", path)
	}
	if st.Size < 0 || uint64(st.Size) != size {
		return nil, fmt.Errorf("segment %s is %d bytes, the descriptor says %d", path, st.Size, size)
	}
	data, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map segment %s: %w", path, err)
	}
	return data, nil
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
	prefix := "phased-" + name + "-"
	n := 0
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(shmDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}
