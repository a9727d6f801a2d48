// Package weights reads and writes model checkpoints: safetensors files (single and sharded through
// model.safetensors.index.json), memory-mapped, with strict validation of every header before any tensor
// is touched, dtype conversion to float32 and bfloat16, and Hugging Face config.json parsing.
//
// It knows nothing about any architecture: the llama package maps names to weights and builds its typed
// Config from the raw Config parsed here. Checkpoint.CheckShapes compares a checkpoint with the tensor set an
// architecture expects.
//
// Files:
//   - safetensors.go: the file format, header validation, mapping one file
//   - checkpoint.go: Checkpoint (OpenDir, OpenIndex, OpenFile), reads, CheckShapes
//   - convert.go: F64/F32/F16/BF16 to float32 and bfloat16, EncodeFloat32
//   - write.go: Write, an atomic single-file safetensors writer
//   - config.go: config.json parsing
//   - mmap_unix.go, mmap_other.go: memory mapping, and reading the file where mmap does not exist
package weights
