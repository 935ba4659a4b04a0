package main

import (
	"bufio"
	"bytes"
	endian "encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// A snapshot's memory file is written from QEMU's migration stream: QEMU
// (7.2) sends the guest's RAM in it, page by page, before the devices' state.
// splitStream copies the stream to the state file less the pages of the RAM
// block memBackend, and writes those at their offsets into the memory file.
// The state file then loads into a QEMU whose RAM is the memory file mapped
// privately (memory-backend-file share=off): no page of that block arrives,
// so the guest sees the file's contents, paged in on first touch, as
// Firecracker's File backend maps the file MAP_PRIVATE.
//
// The stream's layout (QEMU 7.2, migration/savevm.c and ram.c; no
// capabilities enabled): magic and version, the configuration section, then
// the "ram" section's setup (START), iterations (PART) and last pass (END),
// each a list of page headers ending in RAM_SAVE_FLAG_EOS, then one FULL
// section per device, EOF, and perhaps a JSON description. Everything from
// the first FULL section on is copied unchanged.

const (
	qemuMagic      = 0x5145564d // "QEVM"
	qemuVersion    = 3
	secStart       = 0x01
	secPart        = 0x02
	secEnd         = 0x03
	secFull        = 0x04
	secConfig      = 0x07
	secFooter      = 0x7e
	secEOF         = 0x00
	flagZero       = 0x02
	flagMemSize    = 0x04
	flagPage       = 0x08
	flagEOS        = 0x10
	flagContinue   = 0x20
	pageSize       = 4096
	pageFlagsMask  = pageSize - 1
	maxRunBytes    = 1 << 20
	maxIDLen       = 255
	streamBufBytes = 1 << 20
)

// splitter is one split in progress.
type splitter struct {
	in       *bufio.Reader
	out      *bufio.Writer // the state file
	mem      *os.File      // the memory file, already sized
	ramID    uint32        // the "ram" section's id
	outBlock string        // the block of the last page header written to out
	inBlock  string        // the block of the last page header read
	memBytes int64         // the RAM block's size, from the setup
	run      []byte        // contiguous memory pages not yet written
	runAt    int64
	// base, for a Diff snapshot of a guest loaded from a memory file, is
	// that file, mapped: only the pages that differ from it are written (the
	// guest is paused, so QEMU sends each page once).
	base []byte
}

// zeroPage is a page of zeros.
var zeroPage = make([]byte, pageSize)

// splitStream reads a migration stream from in until EOF; see above.
// It returns the size of the RAM block memBackend.
// With a base, the memory file gets only the pages that differ from it.
func splitStream(in io.Reader, state io.Writer, mem *os.File, base []byte) (int64, error) {
	s := &splitter{in: bufio.NewReaderSize(in, streamBufBytes), out: bufio.NewWriterSize(state, streamBufBytes), mem: mem, base: base}
	if err := s.split(); err != nil {
		return 0, fmt.Errorf("QEMU's migration stream: %w", err)
	}
	if err := s.flushRun(); err != nil {
		return 0, err
	}
	if s.memBytes == 0 {
		return 0, fmt.Errorf("QEMU's migration stream has no RAM block %q", memBackend)
	}
	return s.memBytes, s.out.Flush()
}

func (s *splitter) split() error {
	if magic, err := s.be32(true); err != nil || magic != qemuMagic {
		return fmt.Errorf("bad magic %#x (%v)", magic, err)
	}
	if v, err := s.be32(true); err != nil || v != qemuVersion {
		return fmt.Errorf("unsupported version %d (%v)", v, err)
	}
	for {
		kind, err := s.in.ReadByte()
		if err != nil {
			return err
		}
		switch kind {
		case secConfig:
			// The machine type's name; no subsection follows (no capability
			// that is validated is enabled).
			s.out.WriteByte(kind)
			n, err := s.be32(true)
			if err != nil || n > maxIDLen {
				return fmt.Errorf("configuration: %v (length %d)", err, n)
			}
			if err := s.copyN(int64(n)); err != nil {
				return err
			}
		case secStart, secPart, secEnd:
			s.out.WriteByte(kind)
			if err := s.ramSection(kind); err != nil {
				return err
			}
		case secFull, secEOF:
			s.out.WriteByte(kind)
			_, err := io.Copy(s.out, s.in)
			return err
		default:
			return fmt.Errorf("unexpected section type %#x", kind)
		}
	}
}

// ramSection copies one section of the "ram" handler, its memory pages
// left out, with its footer.
func (s *splitter) ramSection(kind byte) error {
	id, err := s.be32(true)
	if err != nil {
		return err
	}
	if kind == secStart {
		name, err := s.idstr(true)
		if err != nil {
			return err
		}
		if name != "ram" {
			return fmt.Errorf("iterative section %q: only ram is supported", name)
		}
		s.ramID = id
		if err := s.copyN(8); err != nil { // instance and version ids
			return err
		}
	} else if id != s.ramID {
		return fmt.Errorf("section %d is not ram's (%d)", id, s.ramID)
	}
	for {
		hdr, err := s.be64(false)
		if err != nil {
			return err
		}
		flags, addr := hdr&pageFlagsMask, int64(hdr&^pageFlagsMask)
		switch {
		case flags&flagEOS != 0:
			s.putBE64(hdr)
			// The footer, when the machine sends them: its marker and the section id.
			if b, err := s.in.Peek(1); err == nil && b[0] == secFooter {
				return s.copyN(5)
			}
			return nil
		case flags&flagMemSize != 0:
			if err := s.setup(hdr, addr); err != nil {
				return err
			}
		case flags&(flagPage|flagZero) != 0:
			if err := s.page(flags, addr); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unsupported page flags %#x", flags)
		}
	}
}

// setup copies the RAM section's list of blocks, noting the memory's size.
func (s *splitter) setup(hdr uint64, total int64) error {
	s.putBE64(hdr)
	for total > 0 {
		name, err := s.idstr(true)
		if err != nil {
			return err
		}
		n, err := s.be64(true)
		if err != nil {
			return err
		}
		if name == memBackend {
			s.memBytes = int64(n)
			if s.base != nil && int64(len(s.base)) != s.memBytes {
				return fmt.Errorf("the memory file the guest was loaded from is %d bytes, its memory %d", len(s.base), s.memBytes)
			}
			if err := s.mem.Truncate(s.memBytes); err != nil {
				return err
			}
		}
		total -= int64(n)
	}
	return nil
}

// page moves one page: into the memory file for the memory block (a zero
// page stays a hole), to the state file for any other block.
func (s *splitter) page(flags uint64, addr int64) error {
	if flags&flagContinue == 0 {
		name, err := s.idstr(false)
		if err != nil {
			return err
		}
		s.inBlock = name
	}
	var data []byte
	if flags&flagZero != 0 {
		fill, err := s.in.ReadByte()
		if err != nil {
			return err
		}
		data = []byte{fill}
	} else {
		data = make([]byte, pageSize)
		if _, err := io.ReadFull(s.in, data); err != nil {
			return err
		}
	}
	if s.inBlock == memBackend {
		if addr+pageSize > s.memBytes {
			return fmt.Errorf("page at %#x beyond the memory's %d bytes", addr, s.memBytes)
		}
		if flags&flagZero != 0 {
			if data[0] == 0 {
				data = zeroPage
			} else {
				data = bytesOf(data[0])
			}
		}
		switch {
		case s.base != nil && bytes.Equal(s.base[addr:addr+pageSize], data):
			return nil // not changed since the load: a hole in a Diff
		case s.base == nil && &data[0] == &zeroPage[0]:
			return nil // the file is new: a hole reads as zeros
		}
		return s.memPage(addr, data)
	}
	hdr := uint64(addr) | flags&^flagContinue
	if s.inBlock == s.outBlock {
		hdr |= flagContinue
	}
	s.putBE64(hdr)
	if s.inBlock != s.outBlock {
		s.out.WriteByte(byte(len(s.inBlock)))
		s.out.WriteString(s.inBlock)
		s.outBlock = s.inBlock
	}
	_, err := s.out.Write(data)
	return err
}

func bytesOf(b byte) []byte {
	p := make([]byte, pageSize)
	for i := range p {
		p[i] = b
	}
	return p
}

// memPage writes a page of memory, gathering contiguous ones.
func (s *splitter) memPage(addr int64, data []byte) error {
	if len(s.run) > 0 && (s.runAt+int64(len(s.run)) != addr || len(s.run) >= maxRunBytes) {
		if err := s.flushRun(); err != nil {
			return err
		}
	}
	if len(s.run) == 0 {
		s.runAt = addr
	}
	s.run = append(s.run, data...)
	return nil
}

func (s *splitter) flushRun() error {
	if len(s.run) == 0 {
		return nil
	}
	_, err := s.mem.WriteAt(s.run, s.runAt)
	s.run = s.run[:0]
	if err != nil {
		return fmt.Errorf("memory file: %w", err)
	}
	return nil
}

// be32 reads a big-endian uint32, copying it to the state file when keep.
func (s *splitter) be32(keep bool) (uint32, error) {
	var b [4]byte
	if _, err := io.ReadFull(s.in, b[:]); err != nil {
		return 0, err
	}
	if keep {
		s.out.Write(b[:])
	}
	return endian.BigEndian.Uint32(b[:]), nil
}

func (s *splitter) be64(keep bool) (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(s.in, b[:]); err != nil {
		return 0, err
	}
	if keep {
		s.out.Write(b[:])
	}
	return endian.BigEndian.Uint64(b[:]), nil
}

func (s *splitter) putBE64(v uint64) {
	var b [8]byte
	endian.BigEndian.PutUint64(b[:], v)
	s.out.Write(b[:])
}

// idstr reads a length-prefixed name.
func (s *splitter) idstr(keep bool) (string, error) {
	n, err := s.in.ReadByte()
	if err != nil {
		return "", err
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(s.in, b); err != nil {
		return "", err
	}
	if keep {
		s.out.WriteByte(n)
		s.out.Write(b)
	}
	return string(b), nil
}

func (s *splitter) copyN(n int64) error {
	_, err := io.CopyN(s.out, s.in, n)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
