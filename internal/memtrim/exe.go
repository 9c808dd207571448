package memtrim

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ShrinkExecutableMappings drops this process's page-table mappings of its
// own executable's read-only segments and turns off fault-around and
// readahead for them, so that from now on only the pages the process really
// touches are mapped. The kernel maps a whole window around every page
// fault; for a 16 MiB static executable that is most of the file, in each of
// the four processes of the tree. Writable segments are never touched
// (MADV_DONTNEED would discard their private copies).
func ShrinkExecutableMappings() error {
	var exe unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &exe); err != nil {
		return fmt.Errorf("stat /proc/self/exe: %w", err)
	}
	// Only a fixed-address executable has read-only mappings that are pure
	// file pages: a position-independent one's relocated (RELRO) pages are
	// private copies that MADV_DONTNEED would revert to the file.
	if fixed, err := isFixedAddressELF("/proc/self/exe"); err != nil || !fixed {
		return err
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || strings.Contains(fields[1], "w") {
			continue
		}
		ino, err := strconv.ParseUint(fields[4], 10, 64)
		if err != nil || ino != exe.Ino || !sameDevice(fields[3], exe.Dev) {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		for _, advice := range []int{unix.MADV_RANDOM, unix.MADV_DONTNEED} {
			if _, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), uintptr(advice)); e != 0 {
				return fmt.Errorf("madvise %s: %w", fields[0], e)
			}
		}
	}
	return sc.Err()
}

// sameDevice compares a maps "major:minor" field (hex) with a stat device.
func sameDevice(field string, dev uint64) bool {
	maj, min, ok := strings.Cut(field, ":")
	if !ok {
		return false
	}
	ma, err1 := strconv.ParseUint(maj, 16, 32)
	mi, err2 := strconv.ParseUint(min, 16, 32)
	return err1 == nil && err2 == nil && uint32(ma) == unix.Major(dev) && uint32(mi) == unix.Minor(dev)
}

// isFixedAddressELF reports whether path is an ELF ET_EXEC file.
func isFixedAddressELF(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC {
		return false, nil
	}
	// A dynamic loader (PT_INTERP) relocates, and RELRO pages it then makes
	// read-only are private copies too: only a static executable qualifies.
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_GNU_RELRO {
			return false, nil
		}
	}
	return true, nil
}
