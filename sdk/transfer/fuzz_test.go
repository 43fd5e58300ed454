package transfer

// Fuzz targets for every decoder of bytes that come from the network:
//
//   - FuzzDescriptor: a receiver's descriptor on a sender's room socket
//     (proto.Unmarshal, then parseDescriptor).
//   - FuzzStatusFrame: a sender's status frame on a receiver's status
//     socket (owner.handleStatus: decode, version, room, generation and
//     transition checks, headersFromProto), then verifyTensors against a
//     fixed receiver layout.
//   - FuzzTensorHeader: one TensorHeader, as both frames carry them, into a
//     tensor.Spec and its NumBytes.
//
// owner.handleDescriptor is not fuzzed on its own: before and after
// parseDescriptor it connects a socket to the endpoint the descriptor names,
// which needs a started Manager and would make the fuzzer open real
// connections. Its decode and validation are FuzzDescriptor's.
//
// Seeds are the f.Add calls below and the files in testdata/fuzz/<Target>/;
// plain `go test` runs both. Regenerate the seed files with
//
//	go test ./sdk/transfer -run '^TestWriteFuzzCorpus$' -update-fuzz-corpus

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/proto/phasedv1"
	"github.com/phased/phased/sdk/tensor"
)

var updateFuzzCorpus = flag.Bool("update-fuzz-corpus", false, "rewrite the seed files in testdata/fuzz")

// The fixed receiver room the status-frame target checks frames against.
const (
	fuzzRoom = 7
	fuzzGen  = 42
	fuzzName = "fuzz"
)

// fuzzSpecs lay out as latent [0,32), empty [64,64) and ids [64,164) in a
// 192-byte segment: a zero-length buffer shares an offset with another.
var fuzzSpecs = []tensor.Spec{
	{Name: "latent", DType: tensor.Float32, Shape: []int64{2, 4}},
	{Name: "empty", DType: tensor.Int64, Shape: []int64{0, 3}},
	{Name: "ids", DType: tensor.Uint8, Shape: []int64{100}},
}

// fuzzLayout is the receiver side of the fixed room: its buffers, a data
// buffer exactly as large as the segment (so any read past the segment
// panics) and the checksum of each buffer's bytes.
type fuzzLayout struct {
	bufs []buffer
	size uint64
	data []byte
	sums []uint64
}

func newFuzzLayout(tb testing.TB) fuzzLayout {
	tb.Helper()
	bufs, size, err := layout(fuzzSpecs, ctrlSize)
	if err != nil {
		tb.Fatal(err)
	}
	data := make([]byte, size) // len == cap == segment size
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	sums := make([]uint64, len(bufs))
	for i, b := range bufs {
		sums[i] = tensor.Checksum(data[b.offset : b.offset+b.length])
	}
	return fuzzLayout{bufs: bufs, size: size, data: data, sums: sums}
}

// headers returns what a correct sender reports in its Success frame.
func (l fuzzLayout) headers() []header {
	hs := make([]header, len(l.bufs))
	for i, b := range l.bufs {
		hs[i] = header{spec: cloneSpec(b.spec), length: b.length, sum: l.sums[i]}
	}
	return hs
}

type fuzzSeed struct {
	name string
	b    []byte
}

func mustMarshal(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// overlongVarint is field 1 (varint) holding an 11-byte varint: more than
// the 10 bytes a uint64 may take.
var overlongVarint = []byte{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}

// maxVarint appends field num holding math.MaxUint64 as a 10-byte varint.
func maxVarint(b []byte, num protowire.Number) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, math.MaxUint64)
}

func descriptorSeeds(tb testing.TB) []fuzzSeed {
	tb.Helper()
	ep := "ipc:///run/phased/" + receiverSocketName(fuzzRoom, fuzzGen)
	seg := segmentName(fuzzName, fuzzRoom, fuzzGen)
	bufs, at, need, err := shmLayout(fuzzSpecs)
	if err != nil {
		tb.Fatal(err)
	}
	valid, err := encodeDescriptor(sdk.BackendShm, fuzzRoom, fuzzGen, ep, seg, need, bufs, nil, at)
	if err != nil {
		tb.Fatal(err)
	}
	edit := func(fn func(pd *phasedv1.Descriptor)) []byte {
		var pd phasedv1.Descriptor
		if err := proto.Unmarshal(valid, &pd); err != nil {
			tb.Fatal(err)
		}
		fn(&pd)
		return mustMarshal(tb, &pd)
	}
	many := edit(func(pd *phasedv1.Descriptor) {
		pd.Buffers = make([]*phasedv1.TensorHeader, maxBuffers+1)
		for i := range pd.Buffers {
			pd.Buffers[i] = &phasedv1.TensorHeader{Name: "b" + strconv.Itoa(i), Dtype: uint32(tensor.Uint8), Shape: []int64{1}, Offset: uint64(i), Length: 1}
		}
		pd.SegmentSize = maxBuffers + 1
	})
	return []fuzzSeed{
		{"valid", valid},
		{"valid-no-buffers", edit(func(pd *phasedv1.Descriptor) { pd.Buffers = nil })},
		{"truncated", valid[:len(valid)-5]},
		{"overlong-varint", overlongVarint},
		{"offset-max-uint64", edit(func(pd *phasedv1.Descriptor) { pd.Buffers[0].Offset = math.MaxUint64 })},
		{"offset-wraps", edit(func(pd *phasedv1.Descriptor) { pd.Buffers[2].Offset = math.MaxUint64 - 50 })},
		{"huge-shape", edit(func(pd *phasedv1.Descriptor) {
			pd.Buffers[0].Shape = []int64{1 << 40, 1 << 40}
			pd.Buffers[0].Length = 0
		})},
		{"huge-shape-times-zero", edit(func(pd *phasedv1.Descriptor) { pd.Buffers[1].Shape = []int64{1 << 40, 1 << 40, 0} })},
		{"negative-dims", edit(func(pd *phasedv1.Descriptor) { pd.Buffers[0].Shape = []int64{-2, -4} })},
		{"overlap", edit(func(pd *phasedv1.Descriptor) { pd.Buffers[2].Offset = 16 })},
		{"max-segment-size", append(slices.Clone(valid), maxVarint(nil, 6)...)},
		{"other-room-segment", edit(func(pd *phasedv1.Descriptor) { pd.Segment = segmentName(fuzzName, fuzzRoom+1, fuzzGen) })},
		{"path-traversal", edit(func(pd *phasedv1.Descriptor) { pd.Segment = "phased-../../etc/passwd-7-42" })},
		{"merged-twice", append(slices.Clone(valid), valid...)}, // buffers repeated: overlap
		{"too-many-buffers", many},
		{"cuda", edit(func(pd *phasedv1.Descriptor) {
			pd.Backend, pd.Segment, pd.CudaIpcHandle = string(sdk.BackendCUDA), "", bytes.Repeat([]byte{0xc7}, 64)
		})},
		{"cuda-short-handle", edit(func(pd *phasedv1.Descriptor) {
			pd.Backend, pd.Segment, pd.CudaIpcHandle = string(sdk.BackendCUDA), "", []byte{1, 2, 3}
		})},
		{"shm-with-handle", edit(func(pd *phasedv1.Descriptor) { pd.CudaIpcHandle = make([]byte, 64) })},
		{"valid-frames-only", edit(func(pd *phasedv1.Descriptor) { pd.ChecksumOffset, pd.HandoffOffset = 0, 0 })},
		{"checksums-over-a-buffer", edit(func(pd *phasedv1.Descriptor) { pd.ChecksumOffset = pd.Buffers[2].Offset + 8 })},
		{"checksums-in-ctrl", edit(func(pd *phasedv1.Descriptor) { pd.ChecksumOffset = 8 })},
		{"checksums-unaligned", edit(func(pd *phasedv1.Descriptor) { pd.ChecksumOffset++ })},
		{"checksums-past-the-end", edit(func(pd *phasedv1.Descriptor) { pd.ChecksumOffset = pd.SegmentSize - 16 })},
		{"checksums-wrap", edit(func(pd *phasedv1.Descriptor) { pd.ChecksumOffset = math.MaxUint64 - 7 })},
		{"checksums-zmq", edit(func(pd *phasedv1.Descriptor) { pd.Backend, pd.Segment = string(sdk.BackendZMQ), "" })},
		{"handoffs-without-checksums", edit(func(pd *phasedv1.Descriptor) { pd.ChecksumOffset = 0 })},
		{"handoffs-over-the-checksums", edit(func(pd *phasedv1.Descriptor) { pd.HandoffOffset = pd.ChecksumOffset })},
		{"handoffs-over-a-buffer", edit(func(pd *phasedv1.Descriptor) { pd.HandoffOffset = pd.Buffers[0].Offset })},
		{"handoffs-in-ctrl", edit(func(pd *phasedv1.Descriptor) { pd.HandoffOffset = 16 })},
		{"handoffs-unaligned", edit(func(pd *phasedv1.Descriptor) { pd.HandoffOffset += 4 })},
		{"handoffs-past-the-end", edit(func(pd *phasedv1.Descriptor) { pd.HandoffOffset = pd.SegmentSize - 128 })},
		{"handoffs-wrap", edit(func(pd *phasedv1.Descriptor) { pd.HandoffOffset = math.MaxUint64 - 127 })},
		{"valid-no-handoffs", edit(func(pd *phasedv1.Descriptor) { pd.HandoffOffset = 0 })},
	}
}

func statusSeeds(tb testing.TB) []fuzzSeed {
	tb.Helper()
	l := newFuzzLayout(tb)
	enc := func(room, gen uint64, st Status, reason string, hs []header) []byte {
		b, err := encodeStatus(room, gen, st, reason, hs)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	good := l.headers()
	with := func(fn func(hs []header) []header) []header {
		hs := l.headers()
		return fn(hs)
	}
	success := enc(fuzzRoom, fuzzGen, Success, "", good)
	badUTF8 := protowire.AppendTag(enc(fuzzRoom, fuzzGen, Failed, "", nil), 5, protowire.BytesType)
	badUTF8 = protowire.AppendString(badUTF8, "bad \xff\xfe utf-8")
	return []fuzzSeed{
		{"transferring", enc(fuzzRoom, fuzzGen, Transferring, "", nil)},
		{"success", success},
		{"success-bad-crc", enc(fuzzRoom, fuzzGen, Success, "", with(func(hs []header) []header { hs[2].sum ^= 1; return hs }))},
		{"success-huge-length", enc(fuzzRoom, fuzzGen, Success, "", with(func(hs []header) []header { hs[0].length = math.MaxUint64; return hs }))},
		{"success-huge-shape", enc(fuzzRoom, fuzzGen, Success, "", with(func(hs []header) []header {
			hs[2].spec.Shape = []int64{math.MaxInt64, math.MaxInt64}
			return hs
		}))},
		{"success-extra-tensor", enc(fuzzRoom, fuzzGen, Success, "", append(good, header{spec: tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{-1}}}))},
		{"success-truncated", success[:len(success)-7]},
		{"failed-long-reason", enc(fuzzRoom, fuzzGen, Failed, strings.Repeat("é", 3*maxReasonLen), nil)},
		{"failed-bad-utf8", badUTF8},
		{"wrong-generation", enc(fuzzRoom, fuzzGen+1, Transferring, "", nil)},
		{"wrong-room", enc(fuzzRoom+1, fuzzGen, Failed, "boom", nil)},
		{"unknown-status", maxVarint(enc(fuzzRoom, fuzzGen, Transferring, "", nil), 4)},
		{"overlong-varint", overlongVarint},
	}
}

func tensorHeaderSeeds(tb testing.TB) []fuzzSeed {
	tb.Helper()
	th := func(dtype tensor.DType, shape ...int64) []byte {
		return mustMarshal(tb, &phasedv1.TensorHeader{Name: "t", Dtype: uint32(dtype), Shape: shape, Offset: 64, Length: 32, Xxh3: 0xdeadbeef})
	}
	// Unpacked repeated shape: each dimension its own field 3 varint.
	unpacked := protowire.AppendTag(nil, 2, protowire.VarintType)
	unpacked = protowire.AppendVarint(unpacked, uint64(tensor.Float16))
	for _, d := range []uint64{3, 5} {
		unpacked = protowire.AppendTag(unpacked, 3, protowire.VarintType)
		unpacked = protowire.AppendVarint(unpacked, d)
	}
	valid := th(tensor.Float32, 2, 4)
	return []fuzzSeed{
		{"valid", valid},
		{"unpacked-shape", unpacked},
		{"truncated", valid[:len(valid)-3]},
		{"negative-dim", th(tensor.Float32, 2, -4)},
		{"unknown-dtype", th(tensor.DType(math.MaxUint32), 1)},
		{"overflow", th(tensor.Int64, math.MaxInt64, math.MaxInt64)},
		{"max-bytes-exactly", th(tensor.Uint8, 1<<20, 1<<20)},
		{"max-bytes-plus-one-element", th(tensor.Int32, 1<<38+1)},
		{"zero-after-overflow", th(tensor.Float32, 1<<40, 1<<40, 0)},
		{"overlong-varint", overlongVarint},
	}
}

// FuzzDescriptor: whatever parseDescriptor accepts is safe to map and copy
// into, matches the documented rules, and survives encodeDescriptor.
func FuzzDescriptor(f *testing.F) {
	for _, s := range descriptorSeeds(f) {
		f.Add(s.b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var pd phasedv1.Descriptor
		if err := proto.Unmarshal(b, &pd); err != nil {
			return // the owner drops it as undecodable
		}
		d, err := parseDescriptor(&pd)
		fault := descriptorFault(&pd)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "descriptor: ") {
				t.Fatalf("error %q lacks the component prefix", err)
			}
			if fault == "" && !zeroLengthQuirk(&pd, err) {
				t.Fatalf("refused a valid descriptor: %v\n%v", err, &pd)
			}
			return
		}
		if fault != "" {
			t.Fatalf("accepted a descriptor that breaks a rule (%s):\n%v", fault, &pd)
		}
		checkDescriptor(t, &pd, d)

		// Round trip: what the sender accepted encodes and parses the same.
		b2, err := encodeDescriptor(d.backend, pd.GetRoom(), d.generation, d.statusEndpoint, d.segment, d.segmentSize, d.buffers, pd.GetCudaIpcHandle(), tables{sums: d.checksumOffset, handoffs: d.handoffOffset})
		if err != nil {
			t.Fatalf("encode the accepted descriptor: %v", err)
		}
		var pd2 phasedv1.Descriptor
		if err := proto.Unmarshal(b2, &pd2); err != nil {
			t.Fatalf("decode the re-encoded descriptor: %v", err)
		}
		if pd2.GetVersion() != wireVersion || pd2.GetRoom() != pd.GetRoom() {
			t.Fatalf("re-encoded version %d room %d, want %d %d", pd2.GetVersion(), pd2.GetRoom(), wireVersion, pd.GetRoom())
		}
		d2, err := parseDescriptor(&pd2)
		if err != nil {
			t.Fatalf("the re-encoded descriptor is refused: %v", err)
		}
		if diff := diffDescriptors(d, d2); diff != "" {
			t.Fatalf("round trip changed the descriptor: %s", diff)
		}
	})
}

// checkDescriptor asserts the properties of an accepted descriptor on d
// itself, and that d holds what pd said.
func checkDescriptor(t *testing.T, pd *phasedv1.Descriptor, d *descriptor) {
	t.Helper()
	if d.generation != pd.GetGeneration() || d.statusEndpoint != pd.GetStatusEndpoint() || d.segment != pd.GetSegment() || d.segmentSize != pd.GetSegmentSize() {
		t.Fatalf("descriptor %+v does not hold what the frame said:\n%v", d, pd)
	}
	if d.backend == sdk.BackendCUDA {
		if !bytes.Equal(d.handle[:], pd.GetCudaIpcHandle()) {
			t.Fatalf("cuda descriptor with handle %x, the frame said %x", d.handle, pd.GetCudaIpcHandle())
		}
	} else if len(pd.GetCudaIpcHandle()) != 0 {
		t.Fatalf("%s descriptor with a CUDA IPC handle accepted", d.backend)
	}
	if d.backend != sdk.BackendShm {
		if d.segment != "" {
			t.Fatalf("%s descriptor with segment %q accepted", d.backend, d.segment)
		}
	} else {
		if strings.ContainsAny(d.segment, "/\x00") || filepath.Base(d.segment) != d.segment || d.segment == "." || d.segment == ".." {
			t.Fatalf("segment name %q is not one path element", d.segment)
		}
		if suffix := fmt.Sprintf("-%d-%d", pd.GetRoom(), pd.GetGeneration()); !strings.HasSuffix(d.segment, suffix) {
			t.Fatalf("segment %q lacks the suffix %q of its room", d.segment, suffix)
		}
	}
	if d.segmentSize < ctrlSize || d.segmentSize > maxSegmentSize {
		t.Fatalf("segment size %d accepted", d.segmentSize)
	}
	for _, b := range d.buffers {
		if d.backend == sdk.BackendShm && b.offset < ctrlSize {
			t.Fatalf("buffer %q at offset %d, over the control block, accepted", b.spec.Name, b.offset)
		}
	}
	if len(d.buffers) != len(pd.GetBuffers()) || len(d.buffers) > maxBuffers {
		t.Fatalf("%d buffers from %d headers", len(d.buffers), len(pd.GetBuffers()))
	}
	var total uint64
	for i, b := range d.buffers {
		ph := pd.GetBuffers()[i]
		if b.spec.Name != ph.GetName() || uint32(b.spec.DType) != ph.GetDtype() || !slices.Equal(b.spec.Shape, ph.GetShape()) || b.offset != ph.GetOffset() || b.length != ph.GetLength() {
			t.Fatalf("buffer %d is %+v, the frame said %v", i, b, ph)
		}
		end, carry := bits.Add64(b.offset, b.length, 0)
		if carry != 0 || end > d.segmentSize {
			t.Fatalf("buffer %d %q: offset %d + length %d is outside the %d-byte segment", i, b.spec.Name, b.offset, b.length, d.segmentSize)
		}
		n, err := b.spec.NumBytes()
		if err != nil || n < 0 || uint64(n) != b.length {
			t.Fatalf("buffer %d %s: length %d, NumBytes %d (%v)", i, b.spec, b.length, n, err)
		}
		total += b.length
	}
	if total > d.segmentSize {
		t.Fatalf("buffers hold %d bytes in a %d-byte segment", total, d.segmentSize)
	}
	byOffset := slices.Clone(d.buffers)
	sort.Slice(byOffset, func(i, j int) bool { return byOffset[i].offset < byOffset[j].offset })
	var prev *buffer
	for i := range byOffset {
		cur := &byOffset[i]
		if cur.length == 0 {
			continue
		}
		if prev != nil && prev.offset+prev.length > cur.offset {
			t.Fatalf("buffers %q [%d,+%d) and %q [%d,+%d) overlap", prev.spec.Name, prev.offset, prev.length, cur.spec.Name, cur.offset, cur.length)
		}
		prev = cur
	}
}

// descriptorFault checks pd against the descriptor rules, written out
// independently of parseDescriptor. It returns the first rule broken, or ""
// for a valid descriptor. Zero-length buffers overlap nothing.
func descriptorFault(pd *phasedv1.Descriptor) string {
	ep := pd.GetStatusEndpoint()
	ipc, _ := strings.CutPrefix(ep, "ipc://")
	tcp, _ := strings.CutPrefix(ep, "tcp://")
	switch {
	case len(ep) > maxEndpointLen || strings.ContainsRune(ep, 0):
		return "status endpoint too long or with NUL"
	case !(strings.HasPrefix(ep, "ipc://") && ipc != "") && !(strings.HasPrefix(ep, "tcp://") && tcp != ""):
		return "status endpoint scheme"
	}
	name := pd.GetSegment()
	switch pd.GetBackend() {
	case "", "shm":
		rest, ok := strings.CutPrefix(name, "phased-")
		if !ok || rest == "" || len(name) > 255 || strings.ContainsFunc(rest, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-')
		}) {
			return "segment name"
		}
		if !strings.HasSuffix(name, fmt.Sprintf("-%d-%d", pd.GetRoom(), pd.GetGeneration())) {
			return "segment of another room or generation"
		}
	case "zmq", "cuda":
		if name != "" {
			return "a zmq or cuda descriptor names a segment"
		}
	default:
		return "unknown backend"
	}
	if h := pd.GetCudaIpcHandle(); pd.GetBackend() == "cuda" && len(h) != 64 || pd.GetBackend() != "cuda" && len(h) != 0 {
		return "CUDA IPC handle"
	}
	size := pd.GetSegmentSize()
	if size < 64 || size > 1<<44 {
		return "segment size"
	}
	shm := pd.GetBackend() == "" || pd.GetBackend() == "shm"
	if len(pd.GetBuffers()) > 4096 {
		return "too many buffers"
	}
	type span struct{ off, end uint64 }
	var spans []span
	names := map[string]bool{}
	for _, b := range pd.GetBuffers() {
		if b.GetName() == "" {
			return "buffer without a name"
		}
		if names[b.GetName()] {
			return "two buffers with one name"
		}
		names[b.GetName()] = true
		n, fault, _ := specBytes(b.GetDtype(), b.GetShape())
		if fault != "" {
			return "buffer spec: " + fault
		}
		if !n.IsUint64() || n.Uint64() != b.GetLength() {
			return "buffer length differs from its spec"
		}
		if shm && b.GetOffset() < 64 {
			return "buffer over the control block"
		}
		end := new(big.Int).Add(new(big.Int).SetUint64(b.GetOffset()), new(big.Int).SetUint64(b.GetLength()))
		if end.Cmp(new(big.Int).SetUint64(size)) > 0 {
			return "buffer outside the segment"
		}
		if b.GetLength() > 0 {
			spans = append(spans, span{b.GetOffset(), end.Uint64()})
		}
	}
	if off := pd.GetChecksumOffset(); off != 0 {
		n := 8 * uint64(len(pd.GetBuffers()))
		end := new(big.Int).Add(new(big.Int).SetUint64(off), new(big.Int).SetUint64(n))
		switch {
		case !shm:
			return "a checksum table outside shm"
		case off < 64 || off%8 != 0:
			return "checksum table over the control block or unaligned"
		case end.Cmp(new(big.Int).SetUint64(size)) > 0:
			return "checksum table outside the segment"
		case n > 0:
			spans = append(spans, span{off, end.Uint64()})
		}
	}
	if off := pd.GetHandoffOffset(); off != 0 {
		n := 128 * uint64(len(pd.GetBuffers()))
		end := new(big.Int).Add(new(big.Int).SetUint64(off), new(big.Int).SetUint64(n))
		switch {
		case pd.GetChecksumOffset() == 0:
			return "a hand-off table without the fast path"
		case off < 64 || off%8 != 0:
			return "hand-off table over the control block or unaligned"
		case end.Cmp(new(big.Int).SetUint64(size)) > 0:
			return "hand-off table outside the segment"
		case n > 0:
			spans = append(spans, span{off, end.Uint64()})
		}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].off < spans[j].off })
	for i := 1; i < len(spans); i++ {
		if spans[i-1].end > spans[i].off {
			return "buffers or the tables overlap"
		}
	}
	return ""
}

// zeroLengthQuirk reports whether parseDescriptor refused an otherwise
// valid descriptor for a known, safe reason, both about zero-size tensors:
// a zero-length buffer at or inside another buffer's offset can be reported
// as overlapping (it depends on the buffers' order), and a shape with a
// zero dimension after dimensions whose product exceeds tensor.MaxBytes is
// refused by NumBytes.
func zeroLengthQuirk(pd *phasedv1.Descriptor, err error) bool {
	hasZero := slices.ContainsFunc(pd.GetBuffers(), func(b *phasedv1.TensorHeader) bool { return b.GetLength() == 0 })
	return hasZero && (strings.Contains(err.Error(), "overlap") || errors.Is(err, tensor.ErrBadSpec))
}

func diffDescriptors(a, b *descriptor) string {
	if a.generation != b.generation || a.statusEndpoint != b.statusEndpoint || a.segment != b.segment || a.segmentSize != b.segmentSize || a.checksumOffset != b.checksumOffset || len(a.buffers) != len(b.buffers) {
		return fmt.Sprintf("%+v != %+v", *a, *b)
	}
	for i := range a.buffers {
		x, y := a.buffers[i], b.buffers[i]
		if !x.spec.Equal(y.spec) || x.offset != y.offset || x.length != y.length {
			return fmt.Sprintf("buffer %d: %+v != %+v", i, x, y)
		}
	}
	return ""
}

// specBytes is NumBytes written out independently: the exact size, the
// rule the spec breaks ("" if none), and whether the shape before its first
// zero dimension exceeds tensor.MaxBytes (NumBytes refuses those even
// though the zero makes the size 0). The product stops growing once it
// passes MaxBytes, so a shape of many dimensions stays cheap.
func specBytes(dtype uint32, shape []int64) (n *big.Int, fault string, prefixOver bool) {
	sizes := map[uint32]int64{1: 4, 2: 2, 3: 2, 4: 4, 5: 8, 6: 1}
	es, ok := sizes[dtype]
	if !ok {
		return nil, "unknown dtype", false
	}
	maxBytes := big.NewInt(tensor.MaxBytes)
	n = big.NewInt(es)
	negative, zero := false, false
	for _, d := range shape {
		switch {
		case d < 0:
			negative = true
		case d == 0:
			zero = true
		case !zero && !prefixOver:
			n.Mul(n, big.NewInt(d))
			prefixOver = n.Cmp(maxBytes) > 0
		}
	}
	switch {
	case negative:
		return nil, "negative dimension", prefixOver
	case zero:
		return big.NewInt(0), "", prefixOver
	case prefixOver:
		return nil, "over tensor.MaxBytes", true
	}
	return n, "", false
}

// FuzzStatusFrame feeds frames to the receiver's handleStatus for the fixed
// room, first waiting for input and then transferring: a frame is accepted
// only with the right version, room and generation and a legal transition,
// and every other frame is counted as dropped and changes nothing. It then
// runs verifyTensors on the frame's tensors against the room's buffers and
// a data buffer exactly the segment's size: verifyTensors accepts only when
// every header matches its buffer's spec, length and checksum.
func FuzzStatusFrame(f *testing.F) {
	for _, s := range statusSeeds(f) {
		f.Add(s.b)
	}
	l := newFuzzLayout(f)
	pristine := slices.Clone(l.data)
	dir := f.TempDir()
	m, err := New(Config{Dir: dir, ShmDir: dir, Name: fuzzName, Logger: hclog.NewNullLogger()})
	if err != nil {
		f.Fatal(err)
	}
	o := &owner{m: m}

	f.Fuzz(func(t *testing.T, b []byte) {
		var fr phasedv1.StatusFrame
		decoded := proto.Unmarshal(b, &fr) == nil
		st := sdk.RoomStatusFromProto(fr.GetStatus())
		for _, start := range []Status{WaitingForInput, Transferring} {
			r := newRoom(fuzzRoom, Receiver)
			r.status, r.gen, r.bufs = start, fuzzGen, l.bufs
			m.mu.Lock()
			m.rooms[fuzzRoom] = r
			m.mu.Unlock()
			dropped := m.Dropped()

			o.handleStatus(fuzzRoom, b)

			m.mu.Lock()
			delete(m.rooms, fuzzRoom)
			status, reason, final := r.status, r.reason, r.final
			m.mu.Unlock()
			accept := decoded && fr.GetVersion() == wireVersion && fr.GetRoom() == fuzzRoom && fr.GetGeneration() == fuzzGen &&
				(st == Transferring && start == WaitingForInput || st == Success && start == Transferring || st == Failed)
			wantDropped := uint64(1)
			if accept {
				wantDropped = 0
			}
			if got := m.Dropped() - dropped; got != wantDropped {
				t.Fatalf("room %s, frame %v (decoded %t): %d frames dropped, want accepted=%t", start, &fr, decoded, got, accept)
			}
			want := start
			switch {
			case !accept:
			case st == Transferring:
				want = Transferring
			case st == Failed:
				want = Failed
			}
			if status != want {
				t.Fatalf("room %s, frame %v: status %s, want %s", start, &fr, status, want)
			}
			if status == Failed {
				if !strings.HasPrefix(reason, "sender: ") || len(reason) > len("sender: ")+maxReasonLen+len("...") || !utf8.ValidString(reason) {
					t.Fatalf("reason %q: want \"sender: \" and at most %d valid UTF-8 bytes of the sender's", reason, maxReasonLen)
				}
			} else if reason != "" {
				t.Fatalf("status %s with reason %q", status, reason)
			}
			if gotFinal, wantFinal := final != nil, accept && st == Success; gotFinal != wantFinal {
				t.Fatalf("room %s, frame %v: tensors recorded %t, want %t", start, &fr, gotFinal, wantFinal)
			}
			if final != nil {
				if diff := diffHeaders(final, headersFromProto(fr.GetTensors())); diff != "" {
					t.Fatalf("recorded tensors differ from the frame's: %s", diff)
				}
			}
		}
		if !decoded {
			return
		}

		hs := headersFromProto(fr.GetTensors())
		err := verifyTensors(l.bufs, hs, l.data)
		want := len(hs) == len(l.bufs)
		for i := 0; want && i < len(hs); i++ {
			h, b := hs[i], l.bufs[i]
			want = h.spec.Name == b.spec.Name && h.spec.DType == b.spec.DType && slices.Equal(h.spec.Shape, b.spec.Shape) &&
				h.length == b.length && h.sum == l.sums[i]
		}
		if (err == nil) != want {
			t.Fatalf("verifyTensors = %v, want accepted=%t, for %v", err, want, fr.GetTensors())
		}
		if err != nil && !strings.HasPrefix(err.Error(), "verify: ") {
			t.Fatalf("error %q lacks the component prefix", err)
		}
		if !bytes.Equal(l.data, pristine) {
			t.Fatal("verifyTensors wrote to the segment")
		}
	})
}

func diffHeaders(a, b []header) string {
	if len(a) != len(b) {
		return fmt.Sprintf("%d headers != %d", len(a), len(b))
	}
	for i := range a {
		if !a[i].spec.Equal(b[i].spec) || a[i].length != b[i].length || a[i].sum != b[i].sum {
			return fmt.Sprintf("header %d: %+v != %+v", i, a[i], b[i])
		}
	}
	return ""
}

// FuzzTensorHeader: a header converts into a spec that owns its shape;
// NumBytes never panics, gives the exact size within tensor.MaxBytes, and
// refuses unknown dtypes, negative dimensions and oversized shapes with
// tensor.ErrBadSpec; the header survives encodeStatus.
func FuzzTensorHeader(f *testing.F) {
	for _, s := range tensorHeaderSeeds(f) {
		f.Add(s.b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var th phasedv1.TensorHeader
		if err := proto.Unmarshal(b, &th); err != nil {
			return
		}
		h := headersFromProto([]*phasedv1.TensorHeader{&th})[0]
		if h.spec.Name != th.GetName() || uint32(h.spec.DType) != th.GetDtype() || !slices.Equal(h.spec.Shape, th.GetShape()) || h.length != th.GetLength() || h.sum != th.GetXxh3() {
			t.Fatalf("header %+v, the frame said %v", h, &th)
		}
		if len(th.Shape) > 0 {
			th.Shape[0] ^= 1
			if h.spec.Shape[0] == th.Shape[0] {
				t.Fatal("the spec shares its shape with the frame")
			}
			th.Shape[0] ^= 1
		}
		_ = h.spec.String()

		n, err := h.spec.NumBytes()
		size, fault, prefixOver := specBytes(th.GetDtype(), th.GetShape())
		switch {
		case err != nil && !errors.Is(err, tensor.ErrBadSpec):
			t.Fatalf("NumBytes(%s) = %v, want an error wrapping ErrBadSpec", h.spec, err)
		case err != nil && fault == "" && !prefixOver:
			t.Fatalf("NumBytes(%s) = %v, want %s bytes", h.spec, err, size)
		case err == nil && fault != "":
			t.Fatalf("NumBytes(%s) = %d, want an error (%s)", h.spec, n, fault)
		case err == nil && (n < 0 || n > tensor.MaxBytes || !size.IsInt64() || size.Int64() != n):
			t.Fatalf("NumBytes(%s) = %d, want %s", h.spec, n, size)
		}

		fb, err := encodeStatus(fuzzRoom, fuzzGen, Success, "", []header{h})
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		var fr phasedv1.StatusFrame
		if err := proto.Unmarshal(fb, &fr); err != nil {
			t.Fatalf("decode the re-encoded header: %v", err)
		}
		if diff := diffHeaders(headersFromProto(fr.GetTensors()), []header{h}); diff != "" {
			t.Fatalf("round trip: %s", diff)
		}
	})
}

// TestFuzzSeeds checks that the valid seeds are accepted, so that the
// targets' accepting paths stay covered when the wire format changes.
func TestFuzzSeeds(t *testing.T) {
	l := newFuzzLayout(t)
	for _, s := range descriptorSeeds(t) {
		if s.name != "valid" && s.name != "valid-no-buffers" {
			continue
		}
		var pd phasedv1.Descriptor
		if err := proto.Unmarshal(s.b, &pd); err != nil {
			t.Fatal(err)
		}
		if _, err := parseDescriptor(&pd); err != nil {
			t.Errorf("descriptor seed %s: %v", s.name, err)
		}
	}
	for _, s := range statusSeeds(t) {
		if s.name != "success" {
			continue
		}
		var fr phasedv1.StatusFrame
		if err := proto.Unmarshal(s.b, &fr); err != nil {
			t.Fatal(err)
		}
		if err := verifyTensors(l.bufs, headersFromProto(fr.GetTensors()), l.data); err != nil {
			t.Errorf("status seed %s: %v", s.name, err)
		}
	}
}

// TestWriteFuzzCorpus rewrites the seed files under testdata/fuzz (with
// -update-fuzz-corpus): a few valid and hostile seeds of each target, next
// to the inputs the fuzzer found and that were committed by hand.
func TestWriteFuzzCorpus(t *testing.T) {
	if !*updateFuzzCorpus {
		t.Skip("run with -update-fuzz-corpus to rewrite testdata/fuzz")
	}
	targets := []struct {
		name  string
		seeds []fuzzSeed
		files []string
	}{
		{"FuzzDescriptor", descriptorSeeds(t), []string{"valid", "truncated", "overlong-varint", "offset-wraps", "huge-shape", "overlap", "path-traversal", "cuda"}},
		{"FuzzStatusFrame", statusSeeds(t), []string{"success", "success-bad-crc", "success-huge-length", "success-huge-shape", "failed-bad-utf8", "wrong-generation", "unknown-status"}},
		{"FuzzTensorHeader", tensorHeaderSeeds(t), []string{"valid", "unpacked-shape", "truncated", "negative-dim", "unknown-dtype", "overflow", "zero-after-overflow"}},
		{"FuzzDataHeader", dataHeaderSeeds(), []string{"valid", "offset-max", "magic-only", "one-byte-long"}},
	}
	for _, target := range targets {
		dir := filepath.Join("testdata", "fuzz", target.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, s := range target.seeds {
			if !slices.Contains(target.files, s.name) {
				continue
			}
			file := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.b)
			if err := os.WriteFile(filepath.Join(dir, "seed-"+s.name), []byte(file), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func dataHeaderSeeds() []fuzzSeed {
	return []fuzzSeed{
		{name: "valid", b: dataHeader{room: 7, generation: 9, offset: 128}.encode()},
		{name: "offset-max", b: dataHeader{room: 1, generation: 1, offset: ^uint64(0)}.encode()},
		{name: "magic-only", b: []byte("PHD1")},
		{name: "one-byte-long", b: append(dataHeader{room: 1}.encode(), 0)},
	}
}

// FuzzDataHeader feeds the first part of a zmq data message (a dataHeader)
// and an offset to the receiver's decoding: parseDataHeader accepts exactly
// the 28-byte parts with the magic, and round-trips; locateData only ever
// returns a window that lies inside one registered buffer and runs to its
// end.
func FuzzDataHeader(f *testing.F) {
	for _, s := range dataHeaderSeeds() {
		f.Add(s.b)
	}
	f.Add(dataHeader{room: 1, generation: 1, offset: 1 << 63}.encode())
	f.Add([]byte{})
	bufs := []buffer{
		{spec: tensor.Spec{Name: "a", DType: tensor.Uint8, Shape: []int64{100}}, offset: 0, length: 100},
		{spec: tensor.Spec{Name: "empty", DType: tensor.Uint8, Shape: []int64{0}}, offset: 128, length: 0},
		{spec: tensor.Spec{Name: "b", DType: tensor.Float32, Shape: []int64{8}}, offset: 128, length: 32},
	}
	data := make([]byte, 160)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, ok := parseDataHeader(b)
		want := len(b) == dataHeaderSize && b[0] == 'P' && b[1] == 'H' && b[2] == 'D' && b[3] == '1'
		if ok != want {
			t.Fatalf("parseDataHeader(%x) ok = %v, want %v", b, ok, want)
		}
		if ok && !bytes.Equal(h.encode(), b) {
			t.Fatalf("round trip: %x became %x", b, h.encode())
		}
		dst := locateData(bufs, data, h.offset)
		if dst == nil {
			for _, bf := range bufs {
				if h.offset >= bf.offset && h.offset < bf.offset+bf.length {
					t.Fatalf("offset %d is in buffer %q but was refused", h.offset, bf.spec.Name)
				}
			}
			return
		}
		start := uint64(cap(data) - cap(dst)) // dst's offset in data
		for _, bf := range bufs {
			if start >= bf.offset && start < bf.offset+bf.length {
				if start != h.offset || start+uint64(len(dst)) != bf.offset+bf.length {
					t.Fatalf("offset %d: window [%d, %d) is not [offset, end of %q)", h.offset, start, start+uint64(len(dst)), bf.spec.Name)
				}
				return
			}
		}
		t.Fatalf("offset %d: window at %d lies in no buffer", h.offset, start)
	})
}
