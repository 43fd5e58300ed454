# The demo pipeline with its transformer written in Python
# (examples/toy-python, on the Python SDK in sdk/python) between the Go
# encoder and decoder; the GIFs are byte for byte those of the all-Go
# pipeline. make build links the Python phases into bin/plugins:
#   make build
#   bin/supervisor run --config examples/configs/python-transformer.hcl --prompt "a red fox" --count 4
phase "encoder" {
  plugin = "encoder"
}

phase "transformer" {
  plugin    = "pytransformer"
  instances = 2
}

phase "decoder" {
  plugin = "decoder"
}
