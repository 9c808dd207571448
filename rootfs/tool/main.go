// Command tool is the part of the rootfs build that shell cannot do well
// without root or extra packages: picking the kernel modules a VM needs
// with their dependencies, and writing an initramfs (newc cpio). It runs on
// the build host only (rootfs/build.sh, make rootfs / vm-test).
//
//	go run ./rootfs/tool modules DIR NAME...        prints the .ko paths (relative to DIR) in load order
//	go run ./rootfs/tool initramfs OUT SRC=DST...   writes a cpio with those files (root-owned)
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/envd-project/envd/envdinit/sysinit"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: tool modules DIR NAME... | tool initramfs OUT SRC=DST...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "modules":
		err = modules(os.Args[2], os.Args[3:])
	case "initramfs":
		err = initramfs(os.Args[2], os.Args[3:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rootfs tool:", err)
		os.Exit(1)
	}
}

func modules(dir string, names []string) error {
	idx, err := sysinit.IndexModules(dir)
	if err != nil {
		return err
	}
	order, missing, err := idx.Order(names)
	if err != nil {
		return err
	}
	for _, m := range missing {
		fmt.Fprintf(os.Stderr, "rootfs tool: module %s not in %s (built in?)\n", m, dir)
	}
	for _, m := range order {
		p, _ := idx.Path(m)
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fmt.Println(rel)
	}
	return nil
}

// initramfs writes a newc cpio holding each SRC file at DST (mode kept,
// owner root), with the directories above them.
func initramfs(out string, specs []string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &cpioWriter{w: bufio.NewWriter(f), ino: 1}
	dirs := map[string]bool{}
	var files [][2]string
	for _, s := range specs {
		src, dst, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("%q: want SRC=DST", s)
		}
		dst = strings.TrimPrefix(path.Clean("/"+dst), "/")
		for d := path.Dir(dst); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
		files = append(files, [2]string{src, dst})
	}
	var dl []string
	for d := range dirs {
		dl = append(dl, d)
	}
	sort.Strings(dl) // parents before children
	for _, d := range append([]string{"dev", "proc", "sys"}, dl...) {
		if err := w.entry(d, 0o040755, nil, 0); err != nil {
			return err
		}
	}
	for _, fl := range files {
		st, err := os.Stat(fl[0])
		if err != nil {
			return err
		}
		in, err := os.Open(fl[0])
		if err != nil {
			return err
		}
		err = w.entry(fl[1], 0o100000|uint32(st.Mode().Perm()), in, st.Size())
		in.Close()
		if err != nil {
			return fmt.Errorf("add %s: %w", fl[0], err)
		}
	}
	if err := w.entry("TRAILER!!!", 0, nil, 0); err != nil {
		return err
	}
	if err := w.w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
	off int64
}

func (c *cpioWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.off += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func (c *cpioWriter) entry(name string, mode uint32, data io.Reader, size int64) error {
	c.ino++
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	if err := c.write([]byte(hdr + name + "\x00")); err != nil {
		return err
	}
	if err := c.pad(); err != nil {
		return err
	}
	if data != nil {
		n, err := io.Copy(c.w, data)
		c.off += n
		if err != nil {
			return err
		}
		if n != size {
			return fmt.Errorf("%s changed size while copied", name)
		}
	}
	return c.pad()
}
