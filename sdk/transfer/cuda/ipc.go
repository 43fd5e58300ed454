//go:build cuda

package cuda

// gorgonia.org/cu does not wrap the IPC calls; these are thin cgo wrappers.

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>
#include <string.h>

static CUresult phased_ipc_get(CUdeviceptr p, void *out) {
	CUipcMemHandle h;
	CUresult r = cuIpcGetMemHandle(&h, p);
	if (r == CUDA_SUCCESS) memcpy(out, h.reserved, CU_IPC_HANDLE_SIZE);
	return r;
}

static CUresult phased_ipc_open(const void *in, CUdeviceptr *p) {
	CUipcMemHandle h;
	memcpy(h.reserved, in, CU_IPC_HANDLE_SIZE);
	return cuIpcOpenMemHandle(p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
}

static const char *phased_error_name(CUresult r) {
	const char *s = NULL;
	if (cuGetErrorName(r, &s) != CUDA_SUCCESS || s == NULL) return "CUDA_ERROR_UNKNOWN_CODE";
	return s;
}

static const char *phased_error_string(CUresult r) {
	const char *s = NULL;
	if (cuGetErrorString(r, &s) != CUDA_SUCCESS || s == NULL) return "unknown error";
	return s;
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"gorgonia.org/cu"
)

// HandleSize must equal CU_IPC_HANDLE_SIZE; these fail to compile otherwise.
var (
	_ [C.CU_IPC_HANDLE_SIZE - HandleSize]byte
	_ [HandleSize - C.CU_IPC_HANDLE_SIZE]byte
)

// driverError is a CUresult from a call this package makes through cgo.
type driverError struct {
	code int
	name string
	text string
}

func (e *driverError) Error() string { return fmt.Sprintf("%s (%d): %s", e.name, e.code, e.text) }

func check(r C.CUresult) error {
	if r == C.CUDA_SUCCESS {
		return nil
	}
	return &driverError{code: int(r), name: C.GoString(C.phased_error_name(r)), text: C.GoString(C.phased_error_string(r))}
}

// ipcGetHandle wraps cuIpcGetMemHandle. The device's context must be
// current.
func ipcGetHandle(p cu.DevicePtr) (Handle, error) {
	var h Handle
	err := check(C.phased_ipc_get(C.CUdeviceptr(p), unsafe.Pointer(&h[0])))
	return h, err
}

// ipcOpenHandle wraps cuIpcOpenMemHandle with
// CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS. The device's context must be current.
func ipcOpenHandle(h Handle) (cu.DevicePtr, error) {
	var p C.CUdeviceptr
	err := check(C.phased_ipc_open(unsafe.Pointer(&h[0]), &p))
	return cu.DevicePtr(p), err
}

// ipcCloseHandle wraps cuIpcCloseMemHandle. The device's context must be
// current.
func ipcCloseHandle(p cu.DevicePtr) error {
	return check(C.cuIpcCloseMemHandle(C.CUdeviceptr(p)))
}
