package transfer

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/phased/phased/internal/doctest"
	"github.com/phased/phased/sdk/proto/phasedv1"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer/cuda"
)

// protocolDoc is the language-neutral protocol specification. The tests
// below compare the numbers, names and bytes it states in its marked
// tables (an HTML comment <!-- marker --> before each) with this
// package's, so that the doc cannot drift from the code.
const protocolDoc = "../../docs/protocol.md"

// docUint parses a number of the doc: decimal, or hexadecimal with 0x.
func docUint(s string) (uint64, error) {
	if h, ok := strings.CutPrefix(s, "0x"); ok {
		return strconv.ParseUint(h, 16, 64)
	}
	return strconv.ParseUint(s, 10, 64)
}

// TestProtocolDocConstants checks the table of checked constants, both
// ways: every row is a known name with the code's value, and every known
// name has a row.
func TestProtocolDocConstants(t *testing.T) {
	want := map[string]string{
		"wire_version":            strconv.Itoa(wireVersion),
		"max_frame_size":          strconv.Itoa(maxFrameSize),
		"max_buffers":             strconv.Itoa(maxBuffers),
		"max_endpoint_len":        strconv.Itoa(maxEndpointLen),
		"max_reason_len":          strconv.Itoa(maxReasonLen),
		"ctrl_size":               strconv.Itoa(ctrlSize),
		"alignment":               strconv.Itoa(alignment),
		"max_segment_size":        strconv.FormatUint(maxSegmentSize, 10),
		"data_magic":              strconv.FormatUint(dataMagic, 10),
		"data_header_size":        strconv.Itoa(dataHeaderSize),
		"zmq_chunk":               strconv.Itoa(zmqChunk),
		"checksum_block":          strconv.Itoa(tensor.ChecksumBlock),
		"max_tensor_bytes":        strconv.FormatUint(tensor.MaxBytes, 10),
		"cuda_ipc_handle_size":    strconv.Itoa(cuda.HandleSize),
		"max_used_ids":            strconv.Itoa(maxUsedIDs),
		"default_peer_timeout_ms": strconv.FormatInt(DefaultPeerTimeout.Milliseconds(), 10),
		"max_sleep_ms":            strconv.FormatInt(maxSleep.Milliseconds(), 10),
		"futex_wait_op":           strconv.Itoa(futexWaitOp),
		"futex_wake_op":           strconv.Itoa(futexWakeOp),
		"max_socket_path":         strconv.Itoa(MaxSocketPath),
		"shm_dir":                 DefaultShmDir,
		"default_zmq_host":        DefaultZMQHost,
		"default_pool_segments":   strconv.Itoa(DefaultPoolSegments),
		"default_pool_bytes":      strconv.Itoa(DefaultPoolBytes),
	}
	seen := map[string]bool{}
	for _, r := range doctest.Table(t, protocolDoc, "protocol-constants", 2) {
		name, val := r.Cells[0], r.Cells[1]
		code, ok := want[name]
		switch {
		case !ok:
			t.Errorf("%s: the doc states %s = %s; the test knows no such constant (add it to TestProtocolDocConstants, or remove the row)", r.At(), name, val)
			continue
		case seen[name]:
			t.Errorf("%s: %s is listed twice", r.At(), name)
		}
		seen[name] = true
		if n, err := docUint(val); err == nil {
			val = strconv.FormatUint(n, 10)
		}
		if val != code {
			t.Errorf("%s: the doc says %s = %s, the code has %s", r.At(), name, r.Cells[1], code)
		}
	}
	for name, code := range want {
		if !seen[name] {
			t.Errorf("%s: the checked constants lack %s (the code has %s)", protocolDoc, name, code)
		}
	}
}

// TestProtocolDocControlBlock checks the control block's layout: each
// field's offset and width, the reserved rest, and that every field of
// ctrl is listed.
func TestProtocolDocControlBlock(t *testing.T) {
	var c ctrl
	fields := map[string][2]uintptr{
		"progress": {unsafe.Offsetof(c.progress), unsafe.Sizeof(c.progress)},
		"seq":      {unsafe.Offsetof(c.seq), unsafe.Sizeof(c.seq)},
		"waiting":  {unsafe.Offsetof(c.waiting), unsafe.Sizeof(c.waiting)},
		"done":     {unsafe.Offsetof(c.done), unsafe.Sizeof(c.done)},
		"reserved": {unsafe.Offsetof(c.done) + unsafe.Sizeof(c.done), ctrlSize - unsafe.Offsetof(c.done) - unsafe.Sizeof(c.done)},
	}
	seen := map[string]bool{}
	for _, r := range doctest.Table(t, protocolDoc, "ctrl-block", 3) {
		f, ok := fields[r.Cells[2]]
		if !ok {
			t.Errorf("%s: the control block has no field %q", r.At(), r.Cells[2])
			continue
		}
		seen[r.Cells[2]] = true
		if got := fmt.Sprintf("%d %d", f[0], f[1]); r.Cells[0]+" "+r.Cells[1] != got {
			t.Errorf("%s: %s: the doc says offset %s width %s, the code has offset %d width %d", r.At(), r.Cells[2], r.Cells[0], r.Cells[1], f[0], f[1])
		}
	}
	for name := range fields {
		if !seen[name] {
			t.Errorf("%s: the control block table lacks %s", protocolDoc, name)
		}
	}
}

// TestProtocolDocStatuses checks the status table against Status and the
// wire enum, both ways, and the list of legal transitions against
// Status.CanTransitionTo.
func TestProtocolDocStatuses(t *testing.T) {
	seen := map[Status]bool{}
	byName := map[string]Status{}
	for _, r := range doctest.Table(t, protocolDoc, "status-table", 3) {
		n, err := strconv.Atoi(r.Cells[0])
		if err != nil {
			t.Errorf("%s: status number %q: %v", r.At(), r.Cells[0], err)
			continue
		}
		s := Status(n)
		seen[s] = true
		byName[r.Cells[1]] = s
		if !s.Valid() {
			t.Errorf("%s: status %d is not a valid status in the code", r.At(), n)
			continue
		}
		if r.Cells[1] != s.String() {
			t.Errorf("%s: status %d: the doc names it %s, the code %s", r.At(), n, r.Cells[1], s)
		}
		if wire := phasedv1.TransferStatus_name[int32(n)]; r.Cells[2] != wire {
			t.Errorf("%s: status %d: the doc's wire name is %s, the proto's %s", r.At(), n, r.Cells[2], wire)
		}
		if s.Proto() != phasedv1.TransferStatus(n) {
			t.Errorf("%s: status %s has wire value %d, not %d", r.At(), s, s.Proto(), n)
		}
	}
	for n, wire := range phasedv1.TransferStatus_name {
		if s := Status(n); n != 0 && !seen[s] {
			t.Errorf("%s: the status table lacks %d (%s, %s)", protocolDoc, n, s, wire)
		}
	}

	legal := map[[2]Status]bool{}
	for _, r := range doctest.Table(t, protocolDoc, "transitions", 2) {
		from, ok1 := byName[r.Cells[0]]
		to, ok2 := byName[r.Cells[1]]
		if !ok1 || !ok2 {
			t.Errorf("%s: transition %s -> %s names a status not in the status table", r.At(), r.Cells[0], r.Cells[1])
			continue
		}
		legal[[2]Status{from, to}] = true
		if !from.CanTransitionTo(to) {
			t.Errorf("%s: the doc lists %s -> %s as legal; the code refuses it", r.At(), from, to)
		}
	}
	for from := Failed; from <= Success; from++ {
		for to := Failed; to <= Success; to++ {
			if from.CanTransitionTo(to) && !legal[[2]Status{from, to}] {
				t.Errorf("%s: the transitions table lacks %s -> %s, which the code allows", protocolDoc, from, to)
			}
		}
	}
}

// TestProtocolDocEnums checks the enum tables of the doc against the
// generated wire enums, both ways.
func TestProtocolDocEnums(t *testing.T) {
	for _, e := range []struct {
		marker string
		names  map[int32]string
	}{
		{"enum phased.v1.RoomRole", phasedv1.RoomRole_name},
		{"enum phased.v1.ProgressStage", phasedv1.ProgressStage_name},
	} {
		seen := map[int32]bool{}
		for _, r := range doctest.Table(t, protocolDoc, e.marker, 2) {
			n, err := strconv.ParseInt(r.Cells[0], 10, 32)
			if err != nil {
				t.Errorf("%s: number %q: %v", r.At(), r.Cells[0], err)
				continue
			}
			seen[int32(n)] = true
			if wire, ok := e.names[int32(n)]; !ok || wire != r.Cells[1] {
				t.Errorf("%s: %s %d: the doc says %s, the proto %q", r.At(), e.marker, n, r.Cells[1], wire)
			}
		}
		for n, wire := range e.names {
			if !seen[n] {
				t.Errorf("%s: the %s table lacks %d (%s)", protocolDoc, e.marker, n, wire)
			}
		}
	}
}

// TestProtocolDocNames checks the example file names of the doc, made
// from room 42, generation 7, instance transformer-0, pid 4242 and pool
// counter 9, and that the supervisor's parsing of a segment name finds
// the instance and pid again.
func TestProtocolDocNames(t *testing.T) {
	const manager = "transformer-0.4242"
	want := map[string]string{
		"manager":            ProcessName("transformer-0", 4242),
		"sender socket":      senderSocketName(42),
		"receiver socket":    receiverSocketName(42, 7),
		"segment":            segmentName(manager, 42, 7),
		"free segment":       newPool("", manager, 0, 0, func() uint64 { return 9 }).freeName(),
		"output segment":     outputName(manager, 9),
		"lend table segment": lendTableName(manager),
	}
	seen := map[string]bool{}
	for _, r := range doctest.Table(t, protocolDoc, "names", 3) {
		code, ok := want[r.Cells[0]]
		if !ok {
			t.Errorf("%s: the test knows no name %q", r.At(), r.Cells[0])
			continue
		}
		seen[r.Cells[0]] = true
		if r.Cells[2] != code {
			t.Errorf("%s: %s: the doc's example is %s, the code makes %s", r.At(), r.Cells[0], r.Cells[2], code)
		}
		if strings.Contains(r.Cells[0], "segment") {
			if owner, ok := SegmentOwner(r.Cells[2]); !ok || owner != manager {
				t.Errorf("%s: the owner of segment %s is %q (%v), want %s", r.At(), r.Cells[2], owner, ok, manager)
			}
			if inst, pid, ok := SplitProcessName(manager); !ok || inst != "transformer-0" || pid != 4242 {
				t.Errorf("%s: %s splits into %q, %d (%v)", r.At(), manager, inst, pid, ok)
			}
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("%s: the names table lacks %s", protocolDoc, name)
		}
	}
}

// TestProtocolDocDataHeader checks the zmq data header's field table and
// the example header bytes.
func TestProtocolDocDataHeader(t *testing.T) {
	h := dataHeader{room: 0x1112131415161718, generation: 0x2122232425262728, offset: 0x3132333435363738}
	b := h.encode()
	values := map[string]uint64{"magic": dataMagic, "room": h.room, "generation": h.generation, "offset": h.offset}
	end := 0
	for _, r := range doctest.Table(t, protocolDoc, "data-header", 3) {
		off, err1 := strconv.Atoi(r.Cells[0])
		width, err2 := strconv.Atoi(r.Cells[1])
		v, ok := values[r.Cells[2]]
		if err1 != nil || err2 != nil || !ok || (width != 4 && width != 8) || off+width > len(b) {
			t.Errorf("%s: bad row %q", r.At(), r.Cells)
			continue
		}
		delete(values, r.Cells[2])
		var got uint64
		if width == 4 {
			got = uint64(binary.LittleEndian.Uint32(b[off:]))
		} else {
			got = binary.LittleEndian.Uint64(b[off:])
		}
		if got != v {
			t.Errorf("%s: %s is not at offset %d width %d of the encoded header % x", r.At(), r.Cells[2], off, width, b)
		}
		end = max(end, off+width)
	}
	for name := range values {
		t.Errorf("%s: the data header table lacks %s", protocolDoc, name)
	}
	if end != dataHeaderSize {
		t.Errorf("%s: the data header table covers %d bytes, the header is %d", protocolDoc, end, dataHeaderSize)
	}

	lines := doctest.Lines(t, protocolDoc)
	i := doctest.After(t, protocolDoc, lines, "data-header-example")
	if i+2 >= len(lines) || !strings.HasPrefix(lines[i], "```") {
		t.Fatalf("%s:%d: want a code block holding the example header", protocolDoc, i+1)
	}
	doc, err := hex.DecodeString(strings.ReplaceAll(lines[i+1], " ", ""))
	want := dataHeader{room: 42, generation: 7, offset: 4096}
	if err != nil || string(doc) != string(want.encode()) {
		t.Errorf("%s:%d: the example header is %q; room 42, generation 7, offset 4096 encode to % x", protocolDoc, i+2, lines[i+1], want.encode())
	}
	if got, ok := parseDataHeader(doc); !ok || got != want {
		t.Errorf("%s:%d: the example header parses to %+v (%v), want %+v", protocolDoc, i+2, got, ok, want)
	}
}

// TestProtocolDocLayout checks the doc's layout example: the built-in
// transformer's inputs with the default params, laid out after the
// control block, with the fast path's checksum table after them, and
// the size class of a new segment for them.
func TestProtocolDocLayout(t *testing.T) {
	specs := []tensor.Spec{
		{Name: "context", DType: tensor.Float32, Shape: []int64{16, 64}},
		{Name: "latent", DType: tensor.Float32, Shape: []int64{4, 8, 24, 32}},
	}
	bufs, at, need, err := shmLayout(specs)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"checksums":    fmt.Sprintf("%d %d", at.sums, 8*len(bufs)),
		"hand-offs":    fmt.Sprintf("%d %d", at.handoffs, handoffEntry*len(bufs)),
		"need":         strconv.FormatUint(need, 10),
		"segment_size": strconv.FormatUint(sizeClass(need), 10),
	}
	for _, b := range bufs {
		want[b.spec.Name] = fmt.Sprintf("%s %v %d %d", b.spec.DType, b.spec.Shape, b.offset, b.length)
	}
	seen := map[string]bool{}
	for _, r := range doctest.Table(t, protocolDoc, "layout-example", 5) {
		code, ok := want[r.Cells[0]]
		if !ok {
			t.Errorf("%s: the layout example has no row %q", r.At(), r.Cells[0])
			continue
		}
		seen[r.Cells[0]] = true
		got := r.Cells[4]
		if r.Cells[3] != "" {
			got = r.Cells[3] + " " + got
		}
		if r.Cells[1] != "" {
			shape := strings.ReplaceAll(strings.Trim(r.Cells[2], "[]"), ",", "")
			got = fmt.Sprintf("%s [%s] %s %s", r.Cells[1], shape, r.Cells[3], r.Cells[4])
		}
		if got != code {
			t.Errorf("%s: %s: the doc says %q, the code lays out %q", r.At(), r.Cells[0], got, code)
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("%s: the layout example lacks %s", protocolDoc, name)
		}
	}
}

// TestProtocolDocHandoff checks 5.6's tables: the hand-off entry's fields
// are where putHandoff writes them and handoffOf reads them, and the lend
// word's states are the code's.
func TestProtocolDocHandoff(t *testing.T) {
	const name = "phased-transformer-0.4242-out-9"
	entry := make([]byte, handoffEntry)
	if err := putHandoff(entry, 7<<32|lendLent, 128, 4096, name); err != nil {
		t.Fatal(err)
	}
	// offset, width, and a word of the field's description.
	want := [][3]string{{"0", "8", "lend word"}, {"8", "8", "offset"}, {"16", "8", "size"}, {"24", "104", "name"}}
	rows := doctest.Table(t, protocolDoc, "handoff-entry", 3)
	if len(rows) != len(want) {
		t.Fatalf("%s: the hand-off entry has %d fields, want %d", protocolDoc, len(rows), len(want))
	}
	for i, r := range rows {
		if r.Cells[0] != want[i][0] || r.Cells[1] != want[i][1] || !strings.Contains(r.Cells[2], want[i][2]) {
			t.Errorf("%s: field %d is %q, the code's is %v", r.At(), i, r.Cells, want[i])
		}
	}
	if got := binary.LittleEndian.Uint64(entry[0:]); got != 7<<32|lendLent {
		t.Errorf("putHandoff wrote the word %#x at 0", got)
	}
	if got := binary.LittleEndian.Uint64(entry[8:]); got != 128 {
		t.Errorf("putHandoff wrote the offset %d at 8", got)
	}
	if got := binary.LittleEndian.Uint64(entry[16:]); got != 4096 {
		t.Errorf("putHandoff wrote the size %d at 16", got)
	}
	if got := string(entry[24 : 24+len(name)]); got != name || 24+handoffNameMax != handoffEntry {
		t.Errorf("putHandoff wrote the name %q at 24 (%d bytes for it)", got, handoffNameMax)
	}
	w, off, size, got := handoffOf(entry, 0)
	if w != 7<<32|lendLent || off != 128 || size != 4096 || got != name {
		t.Errorf("handoffOf reads %#x %d %d %q back", w, off, size, got)
	}
	states := map[string]string{}
	for _, r := range doctest.Table(t, protocolDoc, "lend-word", 3) {
		states[r.Cells[1][:strings.IndexAny(r.Cells[1]+":", ":")]] = r.Cells[0]
	}
	if states["free"] != "0" || states["lent"] != fmt.Sprintf("token × 2^32 + %d", lendLent) || states["taken"] != fmt.Sprintf("token × 2^32 + %d", lendTaken) {
		t.Errorf("%s: the lend word's states are %q", protocolDoc, states)
	}
}
