# The demo pipeline with the transformer → decoder hop through GPU memory:
# both phases hold their buffers on the device, so the hop uses the cuda
# backend (CUDA IPC, one host), and the others use shared memory. Needs a
# GPU and the binaries `make cuda` builds (bin/cuda/):
#   bin/cuda/supervisor start --plugin-dir bin/cuda --config examples/configs/cuda.hcl
# The demo phases compute on the CPU: the transformer's output is copied
# from host memory into the decoder's device buffer, and the decoder gets a
# host copy of it (sdk.DevicePhase says how a GPU phase takes it as is).
phase "encoder" {
  plugin = "encoder"
}

phase "transformer" {
  plugin = "transformer"
  device = "cuda"
}

phase "decoder" {
  plugin = "decoder"
  device = "cuda"
}
