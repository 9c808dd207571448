package watch

import "unsafe"

func unsafeptr(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
