# The demo pipeline with two transformer instances sharing the load round
# robin: `bin/supervisor start --config examples/configs/two-transformers.hcl`.
phase "encoder" {
  plugin = "encoder"
}

phase "transformer" {
  plugin    = "transformer"
  instances = 2
  policy    = "roundrobin"
}

phase "decoder" {
  plugin = "decoder"
}

release {
  grace = "10s"
}
