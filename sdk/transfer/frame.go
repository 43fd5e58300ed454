package transfer

import (
	"encoding/binary"
	"fmt"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/proto/phasedv1"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer/cuda"
)

// wireVersion is the version every frame carries; a frame with another
// version is dropped.
const wireVersion = 1

// maxFrameSize is ZMQ_MAXMSGSIZE on every PULL socket: frames are small, so
// libzmq drops anything larger before it reaches the owner.
const maxFrameSize = 1 << 20

const (
	maxBuffers     = 4096 // buffers in one descriptor
	maxEndpointLen = 512
	maxReasonLen   = 1024 // longer reasons from a peer are cut
)

// descriptor is a validated phasedv1.Descriptor: every buffer lies inside
// the segment, buffers do not overlap, and each length matches its spec.
type descriptor struct {
	backend        sdk.Backend
	generation     uint64
	statusEndpoint string
	segment        string
	segmentSize    uint64
	buffers        []buffer
	handle         cuda.Handle // a cuda room's
	// checksumOffset is where a shm receiver takes the checksums through
	// the segment (the fast path, section 5.5 of docs/protocol.md); 0:
	// through the Success frame.
	checksumOffset uint64
	// handoffOffset is where a fast-path receiver offers its hand-off
	// table (section 5.6); 0: every tensor is copied.
	handoffOffset uint64
}

// fast reports whether the receiver takes the fast path.
func (d *descriptor) fast() bool { return d.checksumOffset != 0 }

// header is one phasedv1.TensorHeader of a status frame.
type header struct {
	spec   tensor.Spec
	length uint64
	sum    uint64 // XXH3-64 (tensor.Checksum)
}

// checkEndpoint accepts the endpoints a peer may ask us to connect to.
func checkEndpoint(ep string) error {
	if len(ep) > maxEndpointLen {
		return fmt.Errorf("endpoint is %d bytes, the limit is %d", len(ep), maxEndpointLen)
	}
	if strings.ContainsRune(ep, 0) {
		return fmt.Errorf("endpoint %q contains a NUL byte", ep)
	}
	if rest, ok := strings.CutPrefix(ep, "ipc://"); ok && rest != "" {
		return nil
	}
	if rest, ok := strings.CutPrefix(ep, "tcp://"); ok && rest != "" {
		return nil
	}
	return fmt.Errorf("endpoint %q: want ipc://PATH or tcp://HOST:PORT", ep)
}

// parseDescriptor validates what does not depend on the tensors given to
// Send. Its errors become the room's failure reason.
func parseDescriptor(pd *phasedv1.Descriptor) (*descriptor, error) {
	if err := checkEndpoint(pd.GetStatusEndpoint()); err != nil {
		return nil, fmt.Errorf("descriptor: status %w", err)
	}
	backend, err := sdk.ParseBackend(pd.GetBackend())
	if err != nil {
		return nil, fmt.Errorf("descriptor: %w", err)
	}
	name := pd.GetSegment()
	switch {
	case backend != sdk.BackendShm && name != "":
		return nil, fmt.Errorf("descriptor: a %s descriptor names segment %q; it must name none", backend, name)
	case backend != sdk.BackendCUDA && len(pd.GetCudaIpcHandle()) != 0:
		return nil, fmt.Errorf("descriptor: a %s descriptor carries a CUDA IPC handle; only a cuda one may", backend)
	case backend == sdk.BackendCUDA && len(pd.GetCudaIpcHandle()) != cuda.HandleSize:
		return nil, fmt.Errorf("descriptor: the CUDA IPC handle is %d bytes, want %d", len(pd.GetCudaIpcHandle()), cuda.HandleSize)
	case backend != sdk.BackendShm:
	case len(name) > 255 || !segmentNameRE.MatchString(name):
		return nil, fmt.Errorf("descriptor: bad segment name %q: want %s", name, segmentNameRE)
	default:
		// A descriptor may name only the segment of its own room and
		// generation, not another room's.
		if suffix := "-" + strconv.FormatUint(pd.GetRoom(), 10) + "-" + strconv.FormatUint(pd.GetGeneration(), 10); !strings.HasSuffix(name, suffix) {
			return nil, fmt.Errorf("descriptor: segment %q is not the segment of room %d generation %d (want a name ending in %q)", name, pd.GetRoom(), pd.GetGeneration(), suffix)
		}
	}
	size := pd.GetSegmentSize()
	if size < ctrlSize || size > maxSegmentSize {
		return nil, fmt.Errorf("descriptor: segment size %d is out of range (%d..%d)", size, ctrlSize, uint64(maxSegmentSize))
	}
	pbs := pd.GetBuffers()
	if len(pbs) > maxBuffers {
		return nil, fmt.Errorf("descriptor: %d buffers, the limit is %d", len(pbs), maxBuffers)
	}
	d := &descriptor{
		backend:        backend,
		generation:     pd.GetGeneration(),
		statusEndpoint: pd.GetStatusEndpoint(),
		segment:        name,
		segmentSize:    size,
		buffers:        make([]buffer, len(pbs)),
	}
	copy(d.handle[:], pd.GetCudaIpcHandle())
	for i, pb := range pbs {
		b := buffer{
			spec:   tensor.Spec{Name: pb.GetName(), DType: tensor.DType(pb.GetDtype()), Shape: append([]int64(nil), pb.GetShape()...)},
			offset: pb.GetOffset(),
			length: pb.GetLength(),
		}
		if b.spec.Name == "" {
			return nil, fmt.Errorf("descriptor: buffer %d has no name", i)
		}
		// Tensors are matched to buffers by name.
		if slices.ContainsFunc(d.buffers[:i], func(o buffer) bool { return o.spec.Name == b.spec.Name }) {
			return nil, fmt.Errorf("descriptor: two buffers are named %q", b.spec.Name)
		}
		n, err := b.spec.NumBytes()
		if err != nil {
			return nil, fmt.Errorf("descriptor: buffer %d %q: %w", i, b.spec.Name, err)
		}
		if uint64(n) != b.length {
			return nil, fmt.Errorf("descriptor: buffer %d %q: length %d, but %s is %d bytes", i, b.spec.Name, b.length, b.spec, n)
		}
		if backend == sdk.BackendShm && b.offset < ctrlSize {
			return nil, fmt.Errorf("descriptor: buffer %d %q: offset %d is inside the segment's %d-byte control block", i, b.spec.Name, b.offset, ctrlSize)
		}
		if b.offset > size || b.length > size-b.offset {
			return nil, fmt.Errorf("descriptor: buffer %d %q: offset %d + length %d is out of bounds of the %d-byte segment", i, b.spec.Name, b.offset, b.length, size)
		}
		d.buffers[i] = b
	}
	overlap := slices.Clip(d.buffers)
	// The tables, if any, lie in the segment and share no byte with a
	// buffer or each other.
	table := func(what string, off, n uint64) error {
		switch {
		case off < ctrlSize || off%8 != 0:
			return fmt.Errorf("descriptor: %s offset %d: want a multiple of 8 after the %d-byte control block", what, off, ctrlSize)
		case off > size || n > size-off:
			return fmt.Errorf("descriptor: %s offset %d + %d bytes is out of bounds of the %d-byte segment", what, off, n, size)
		}
		overlap = append(overlap, buffer{spec: tensor.Spec{Name: "(" + what + " table)"}, offset: off, length: n})
		return nil
	}
	if off := pd.GetChecksumOffset(); off != 0 {
		if backend != sdk.BackendShm {
			return nil, fmt.Errorf("descriptor: a %s descriptor carries checksum offset %d; only a shm one may", backend, off)
		}
		if err := table("checksum", off, 8*uint64(len(d.buffers))); err != nil {
			return nil, err
		}
		d.checksumOffset = off
	}
	if off := pd.GetHandoffOffset(); off != 0 {
		if d.checksumOffset == 0 {
			return nil, fmt.Errorf("descriptor: hand-off offset %d without a checksum offset; a hand-off table needs the fast path", off)
		}
		if err := table("hand-off", off, handoffEntry*uint64(len(d.buffers))); err != nil {
			return nil, err
		}
		d.handoffOffset = off
	}
	if err := checkOverlap(overlap); err != nil {
		return nil, err
	}
	return d, nil
}

// checkOverlap fails when two buffers share a byte. Empty buffers share
// none, wherever they lie (a receiver's layout gives one the offset of the
// buffer after it), so they are left out: the answer must not depend on
// how a sort orders equal offsets.
func checkOverlap(bufs []buffer) error {
	byOffset := make([]buffer, 0, len(bufs))
	for _, b := range bufs {
		if b.length > 0 {
			byOffset = append(byOffset, b)
		}
	}
	sort.Slice(byOffset, func(i, j int) bool { return byOffset[i].offset < byOffset[j].offset })
	for i := 1; i < len(byOffset); i++ {
		prev, cur := byOffset[i-1], byOffset[i]
		if prev.offset+prev.length > cur.offset {
			return fmt.Errorf("descriptor: buffers %q and %q overlap", prev.spec.Name, cur.spec.Name)
		}
	}
	return nil
}

// selectTensors picks, for each of the receiver's buffers in order, the
// sender's tensor of the same name, and checks that it fits. A sender may
// hold more tensors than a receiver asks for (a decoder takes only the
// latent that a transformer passes on with the context). Tensors in device
// memory are allowed only when device is set (a cuda room).
func selectTensors(ts []tensor.Tensor, bufs []buffer, device bool) ([]tensor.Tensor, error) {
	out := make([]tensor.Tensor, len(bufs))
	for i, b := range bufs {
		k := slices.IndexFunc(ts, func(t tensor.Tensor) bool { return t.Name == b.spec.Name })
		if k < 0 {
			names := make([]string, len(ts))
			for j, t := range ts {
				names[j] = t.Name
			}
			return nil, fmt.Errorf("send: the receiver asks for tensor %q; the sender has %q", b.spec.Name, names)
		}
		t := ts[k]
		if !t.Spec.Equal(b.spec) {
			return nil, fmt.Errorf("send: tensor %d %s does not match the receiver's buffer %s", i, t.Spec, b.spec)
		}
		switch {
		case t.OnDevice() && !device:
			return nil, fmt.Errorf("send: tensor %d %q is in device memory; only a cuda room moves it (this room is not)", i, t.Name)
		case t.OnDevice():
			// Its size is its spec's, which is the buffer's.
		case uint64(len(t.Data)) != b.length:
			return nil, fmt.Errorf("send: tensor %d %q has %d bytes, the receiver's buffer holds %d", i, t.Name, len(t.Data), b.length)
		}
		out[i] = t
	}
	return out, nil
}

func encodeDescriptor(backend sdk.Backend, room, gen uint64, statusEndpoint string, seg string, size uint64, bufs []buffer, handle []byte, at tables) ([]byte, error) {
	pd := &phasedv1.Descriptor{
		ChecksumOffset: at.sums,
		HandoffOffset:  at.handoffs,
		CudaIpcHandle:  handle,
		Backend:        string(backend),
		Version:        wireVersion,
		Room:           room,
		Generation:     gen,
		StatusEndpoint: statusEndpoint,
		Segment:        seg,
		SegmentSize:    size,
		Buffers:        make([]*phasedv1.TensorHeader, len(bufs)),
	}
	for i, b := range bufs {
		pd.Buffers[i] = &phasedv1.TensorHeader{
			Name:   b.spec.Name,
			Dtype:  uint32(b.spec.DType),
			Shape:  b.spec.Shape,
			Offset: b.offset,
			Length: b.length,
		}
	}
	return proto.Marshal(pd)
}

func encodeStatus(room, gen uint64, st Status, reason string, hs []header) ([]byte, error) {
	f := &phasedv1.StatusFrame{
		Version:    wireVersion,
		Room:       room,
		Generation: gen,
		Status:     st.Proto(),
		Reason:     reason,
		Tensors:    make([]*phasedv1.TensorHeader, len(hs)),
	}
	for i, h := range hs {
		f.Tensors[i] = &phasedv1.TensorHeader{
			Name:   h.spec.Name,
			Dtype:  uint32(h.spec.DType),
			Shape:  h.spec.Shape,
			Length: h.length,
			Xxh3:   h.sum,
		}
	}
	return proto.Marshal(f)
}

func headersFromProto(pts []*phasedv1.TensorHeader) []header {
	hs := make([]header, len(pts))
	for i, pt := range pts {
		hs[i] = header{
			spec:   tensor.Spec{Name: pt.GetName(), DType: tensor.DType(pt.GetDtype()), Shape: append([]int64(nil), pt.GetShape()...)},
			length: pt.GetLength(),
			sum:    pt.GetXxh3(),
		}
	}
	return hs
}

// verifyTensors checks what a Success frame says against the room's
// buffers and the bytes in the segment. Errors name the tensor.
func verifyTensors(bufs []buffer, hs []header, data []byte) error {
	var v verifier
	return v.finish(bufs, hs, data, nil, false)
}

// finish checks what a Success frame says against the room's buffers,
// hashes what the verifier has not hashed yet, and compares the checksums.
// A tensor handed off (in lent) is hashed through its view only with
// verifyLent, and its stale buffer never. Errors name the tensor.
func (v *verifier) finish(bufs []buffer, hs []header, data []byte, lent []taken, verifyLent bool) error {
	if err := checkHeaders(bufs, hs); err != nil {
		return err
	}
	if len(lent) > 0 {
		v.skip = make([]bool, len(bufs))
		for _, t := range lent {
			v.skip[t.buf] = true
		}
	}
	v.advance(bufs, data, totalBytes(bufs))
	for _, t := range lent {
		v.sums[t.buf] = hs[t.buf].sum
		if verifyLent {
			sum, err := checksumMapped(t.view)
			if err != nil {
				return fmt.Errorf("verify: tensor %d %q: %w", t.buf, bufs[t.buf].spec.Name, err)
			}
			v.sums[t.buf] = sum
		}
	}
	for i, b := range bufs {
		if got := v.sums[i]; got != hs[i].sum {
			return fmt.Errorf("verify: tensor %d %q: checksum mismatch: buffer has %016x, the sender reported %016x", i, b.spec.Name, got, hs[i].sum)
		}
	}
	return nil
}

// checksumMapped hashes a mapping of another process's file, which that
// process may have truncated: a fault (SIGBUS) is an error, not the end of
// this process.
func checksumMapped(b []byte) (sum uint64, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			if _, fault := p.(interface{ Addr() uintptr }); !fault {
				panic(p)
			}
			err = fmt.Errorf("memory fault reading the lent segment (did its sender truncate it?): %v", p)
		}
	}()
	return tensor.Checksum(b), nil
}

// checkHeaders checks the tensors of a Success frame against the room's
// buffers: their number, specs and lengths.
func checkHeaders(bufs []buffer, hs []header) error {
	if len(hs) != len(bufs) {
		return fmt.Errorf("verify: the sender reported %d tensors, %d expected", len(hs), len(bufs))
	}
	for i, b := range bufs {
		h := hs[i]
		if !h.spec.Equal(b.spec) {
			return fmt.Errorf("verify: tensor %d %q: the sender wrote %s, expected %s", i, b.spec.Name, h.spec, b.spec)
		}
		if h.length != b.length {
			return fmt.Errorf("verify: tensor %d %q: the sender wrote %d bytes, expected %d", i, b.spec.Name, h.length, b.length)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}

// A data message of the zmq backend is two parts: a dataHeader, then the
// bytes for [offset, offset+len(bytes)) of the receiver's buffer.
const (
	dataMagic      = 0x31444850 // "PHD1", little-endian
	dataHeaderSize = 28
	// zmqChunk is how many bytes one data message carries at most.
	zmqChunk = 4 << 20
)

type dataHeader struct {
	room, generation, offset uint64
}

func (h dataHeader) encode() []byte {
	b := make([]byte, dataHeaderSize)
	binary.LittleEndian.PutUint32(b[0:], dataMagic)
	binary.LittleEndian.PutUint64(b[4:], h.room)
	binary.LittleEndian.PutUint64(b[12:], h.generation)
	binary.LittleEndian.PutUint64(b[20:], h.offset)
	return b
}

// parseDataHeader decodes the first part of a data message; ok is false
// for anything else (a status frame is a single part and never gets here).
func parseDataHeader(b []byte) (h dataHeader, ok bool) {
	if len(b) != dataHeaderSize || binary.LittleEndian.Uint32(b) != dataMagic {
		return dataHeader{}, false
	}
	return dataHeader{
		room:       binary.LittleEndian.Uint64(b[4:]),
		generation: binary.LittleEndian.Uint64(b[12:]),
		offset:     binary.LittleEndian.Uint64(b[20:]),
	}, true
}

// locateData returns where the bytes of a data message at offset go: data
// from offset to the end of the buffer that holds offset, or nil when no
// buffer does. Bytes past that end would overflow the buffer.
// bufs are in offset order (layout makes them so).
func locateData(bufs []buffer, data []byte, offset uint64) []byte {
	// The last buffer that starts at or before offset.
	i := sort.Search(len(bufs), func(i int) bool { return bufs[i].offset > offset }) - 1
	for i >= 0 && bufs[i].length == 0 { // empty buffers hold nothing
		i--
	}
	if i < 0 {
		return nil
	}
	b := bufs[i]
	if offset-b.offset < b.length && b.offset+b.length <= uint64(len(data)) {
		return data[offset : b.offset+b.length]
	}
	return nil
}
