package prefixcache

import (
	"fmt"
	"testing"
)

// benchEntry is a KV-cache-like entry: 2 blobs (K, V) per layer, totalMiB in all.
func benchEntry(layers, totalMiB int) (Key, Meta, [][]byte) {
	per := totalMiB << 20 / (2 * layers) / 2 // bf16 elements per blob
	meta := Meta{ModelFingerprint: "bench", DType: "bf16", Tokens: []int{1, 2, 3}}
	var blobs [][]byte
	for i := range 2 * layers {
		meta.Shapes = append(meta.Shapes, []int{per})
		meta.BlobDTypes = append(meta.BlobDTypes, "bf16")
		b := make([]byte, 2*per)
		for j := 0; j < len(b); j += 4096 {
			b[j] = byte(i + j)
		}
		blobs = append(blobs, b)
	}
	return MakeKey(meta.ModelFingerprint, meta.DType, meta.Tokens), meta, blobs
}

func BenchmarkDisk(b *testing.B) {
	for _, mib := range []int{128, 1024} {
		k, meta, blobs := benchEntry(32, mib)
		d := openTestDisk(b)
		mustWrite(b, d, k, meta, blobs)
		b.Run(fmt.Sprintf("Write/%dMiB", mib), func(b *testing.B) {
			b.SetBytes(int64(mib) << 20)
			for b.Loop() {
				mustWrite(b, d, k, meta, blobs)
			}
		})
		b.Run(fmt.Sprintf("WriteFrom/%dMiB", mib), func(b *testing.B) { // each blob produced twice, checksummed twice
			b.SetBytes(int64(mib) << 20)
			for b.Loop() {
				if err := d.WriteFrom(k, meta, len(blobs), func(i int) ([]byte, error) { return blobs[i], nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, workers := range []int{1, 8} {
			b.Run(fmt.Sprintf("Read/%dMiB/workers=%d", mib, workers), func(b *testing.B) {
				defer func(old int) { readWorkers = old }(readWorkers)
				readWorkers = workers
				b.SetBytes(int64(mib) << 20)
				for b.Loop() {
					if _, err := d.Read(k, meta); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(fmt.Sprintf("ReadEach/%dMiB/workers=%d", mib, workers), func(b *testing.B) {
				defer func(old int) { readWorkers = old }(readWorkers)
				readWorkers = workers
				b.SetBytes(int64(mib) << 20)
				for b.Loop() {
					if err := d.ReadEach(k, meta, func(int, []byte) error { return nil }); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
