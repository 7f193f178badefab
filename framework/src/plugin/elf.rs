//! A sanity check of an ELF shared library before `dlopen`: the loader maps the file's
//! segments and touches its headers without checking them against the file's size, so a
//! truncated library kills the process with SIGBUS and no message. [`check`] reads the ELF
//! header, the program headers and the section headers and refuses a file that is not an ELF
//! shared library for this machine, or that is shorter than its headers say.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
const SHT_NOBITS: u32 = 8;

/// `e_machine` of the machine this program runs on (`None`: not checked).
fn host_machine() -> Option<u16> {
    Some(match std::env::consts::ARCH {
        "x86" => 3,
        "x86_64" => 62,
        "arm" => 40,
        "aarch64" => 183,
        "powerpc" => 20,
        "powerpc64" => 21,
        "s390x" => 22,
        "riscv64" | "riscv32" => 243,
        "loongarch64" => 258,
        _ => return None,
    })
}

fn machine_name(m: u16) -> String {
    match m {
        3 => "x86".into(),
        62 => "x86_64".into(),
        40 => "arm".into(),
        183 => "aarch64".into(),
        20 => "powerpc".into(),
        21 => "powerpc64".into(),
        22 => "s390x".into(),
        243 => "riscv".into(),
        258 => "loongarch".into(),
        other => format!("machine {other}"),
    }
}

/// Little- or big-endian field reader over a byte buffer.
struct Fields<'a> {
    b: &'a [u8],
    le: bool,
}

impl Fields<'_> {
    fn u16(&self, at: usize) -> u16 {
        let a = [self.b[at], self.b[at + 1]];
        if self.le {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }
    fn u32(&self, at: usize) -> u32 {
        let a: [u8; 4] = self.b[at..at + 4].try_into().expect("4 bytes");
        if self.le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }
    fn u64(&self, at: usize) -> u64 {
        let a: [u8; 8] = self.b[at..at + 8].try_into().expect("8 bytes");
        if self.le {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }
    /// A word: 4 bytes in ELF32, 8 in ELF64.
    fn word(&self, at: usize, wide: bool) -> u64 {
        if wide {
            self.u64(at)
        } else {
            u64::from(self.u32(at))
        }
    }
}

const REBUILD: &str = "rebuild the plugin (`cargo build --release -p <crate>`) or copy it again";

/// Check the file at `path`; `Err` says what is wrong with it, in words.
pub(crate) fn check(path: &Path) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let size = f.metadata().map_err(|e| format!("cannot be read: {e}"))?.len();
    let mut read_at = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| format!("cannot be read: {e}"))?;
        Ok(buf)
    };
    let head = read_at(0, size.min(64) as usize)?;
    if head.len() < 4 || head[..4] != *b"\x7fELF" {
        return Err(format!("not an ELF shared library (a plugin is the `.{}` a `cdylib` crate builds)", std::env::consts::DLL_EXTENSION));
    }
    if head.len() < 52 {
        return Err(format!("truncated: its ELF header ends at byte 52 or later, and the file has only {size} bytes; {REBUILD}"));
    }
    let wide = match head[4] {
        1 => false,
        2 => true,
        c => return Err(format!("corrupt ELF header (class {c}); {REBUILD}")),
    };
    let host_wide = cfg!(target_pointer_width = "64");
    if wide != host_wide {
        return Err(format!(
            "a {}-bit library, and this program is {}-bit: build the plugin for this machine's target",
            if wide { 64 } else { 32 },
            if host_wide { 64 } else { 32 }
        ));
    }
    let le = match head[5] {
        1 => true,
        2 => false,
        d => return Err(format!("corrupt ELF header (data encoding {d}); {REBUILD}")),
    };
    if le != cfg!(target_endian = "little") {
        return Err("a library of the other byte order than this machine: build the plugin for this machine's target".into());
    }
    if wide && head.len() < 64 {
        return Err(format!("truncated: its ELF header ends at byte 64, and the file has only {size} bytes; {REBUILD}"));
    }
    let h = Fields { b: &head, le };
    let e_type = h.u16(16);
    if e_type != ET_DYN {
        let what = match e_type {
            1 => "a relocatable object (.o)",
            2 => "an executable",
            4 => "a core dump",
            _ => "not a shared library",
        };
        return Err(format!("{what}, not a shared library: a plugin is the library a `cdylib` crate builds"));
    }
    let machine = h.u16(18);
    if let Some(host) = host_machine().filter(|h| *h != machine) {
        return Err(format!(
            "built for {}, and this program runs on {}: build the plugin for this machine's target",
            machine_name(machine),
            machine_name(host)
        ));
    }
    // Offsets of e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize, e_shnum.
    let (phoff, shoff, at) = if wide { (h.u64(32), h.u64(40), 54) } else { (u64::from(h.u32(28)), u64::from(h.u32(32)), 42) };
    let (phentsize, phnum, shentsize, shnum) = (h.u16(at), h.u16(at + 2), h.u16(at + 4), h.u16(at + 6));
    let (ph_min, sh_min) = if wide { (56, 64) } else { (32, 40) };
    let truncated = |what: String, end: u64| {
        Err(format!("truncated or corrupt: {what} end at byte {end}, and the file has only {size} bytes; {REBUILD}"))
    };
    let table_end = |off: u64, n: u16, entsize: u16| off.saturating_add(u64::from(n) * u64::from(entsize));
    if phnum > 0 && phentsize < ph_min {
        return Err(format!("corrupt ELF header (program header size {phentsize}); {REBUILD}"));
    }
    if shnum > 0 && shentsize < sh_min {
        return Err(format!("corrupt ELF header (section header size {shentsize}); {REBUILD}"));
    }
    let ph_end = table_end(phoff, phnum, phentsize);
    if ph_end > size {
        return truncated("its program headers".into(), ph_end);
    }
    let sh_end = table_end(shoff, shnum, shentsize);
    if shnum > 0 && sh_end > size {
        return truncated("its section headers".into(), sh_end);
    }
    if phnum > 0 {
        let ph = read_at(phoff, (ph_end - phoff) as usize)?;
        let ph = Fields { b: &ph, le };
        for i in 0..usize::from(phnum) {
            let at = i * usize::from(phentsize);
            if ph.u32(at) != PT_LOAD {
                continue;
            }
            // p_offset and p_filesz.
            let (offset, filesz) = if wide { (ph.u64(at + 8), ph.u64(at + 32)) } else { (ph.word(at + 4, false), ph.word(at + 16, false)) };
            let end = offset.saturating_add(filesz);
            if end > size {
                return truncated(format!("its loadable segment {i}"), end);
            }
        }
    }
    if shnum > 0 {
        let sh = read_at(shoff, (sh_end - shoff) as usize)?;
        let sh = Fields { b: &sh, le };
        for i in 0..usize::from(shnum) {
            let at = i * usize::from(shentsize);
            if sh.u32(at + 4) == SHT_NOBITS {
                continue;
            }
            // sh_offset and sh_size.
            let (offset, len) = if wide { (sh.u64(at + 24), sh.u64(at + 32)) } else { (sh.word(at + 16, false), sh.word(at + 20, false)) };
            let end = offset.saturating_add(len);
            if len > 0 && end > size {
                return truncated(format!("its section {i}"), end);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal 64-bit little-endian ELF header for this machine, with one PT_LOAD segment
    /// of `filesz` bytes at offset 0 and one section header table of `shnum` entries at `shoff`.
    fn header(e_type: u16, machine: u16, filesz: u64, shoff: u64, shnum: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[40..48].copy_from_slice(&shoff.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b[60..62].copy_from_slice(&shnum.to_le_bytes());
        b[64..68].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[64 + 32..64 + 40].copy_from_slice(&filesz.to_le_bytes());
        b
    }

    fn check_bytes(bytes: &[u8]) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lib.so");
        std::fs::write(&p, bytes).unwrap();
        check(&p)
    }

    #[cfg(all(target_arch = "x86_64", target_endian = "little"))]
    #[test]
    fn headers_are_checked_against_the_file_size_class_type_and_machine() {
        assert_eq!(check_bytes(&header(ET_DYN, 62, 120, 0, 0)), Ok(()));
        let e = check_bytes(&header(ET_DYN, 62, 100_000, 0, 0)).unwrap_err();
        assert!(e.contains("truncated") && e.contains("loadable segment 0 end at byte 100000") && e.contains("only 120 bytes"), "{e}");
        let e = check_bytes(&header(ET_DYN, 62, 120, 5000, 30)).unwrap_err();
        assert!(e.contains("section headers end at byte 6920"), "{e}");
        let e = check_bytes(&header(2, 62, 120, 0, 0)).unwrap_err();
        assert!(e.contains("an executable, not a shared library"), "{e}");
        let e = check_bytes(&header(ET_DYN, 183, 120, 0, 0)).unwrap_err();
        assert!(e.contains("built for aarch64") && e.contains("runs on x86_64"), "{e}");
        let mut b = header(ET_DYN, 62, 120, 0, 0);
        b[4] = 1;
        assert!(check_bytes(&b).unwrap_err().contains("a 32-bit library"));
        let e = check_bytes(b"this is not a shared library").unwrap_err();
        assert!(e.contains("not an ELF shared library"), "{e}");
        let e = check_bytes(&header(ET_DYN, 62, 120, 0, 0)[..40]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }
}
