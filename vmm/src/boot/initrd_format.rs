//! Which initrd formats the guest kernel reads. Our kernel unpacks a newc cpio archive, plain
//! or compressed with gzip or zstd (guest-kernel/config.fragment); an image in any other format
//! would only panic the guest later with "VFS: Unable to mount root fs", so it is refused by
//! name before the guest runs.

/// Enough leading bytes to tell every format below apart.
pub const MAGIC_LEN: usize = 6;

/// What the first bytes of an initrd say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitrdFormat {
    Cpio,
    Gzip,
    Zstd,
    /// A compression the kernel could be built for but ours is not.
    Unsupported(&'static str),
    Unknown,
}

impl InitrdFormat {
    pub fn of(head: &[u8]) -> InitrdFormat {
        const KNOWN: &[(&[u8], InitrdFormat)] = &[
            (b"070701", InitrdFormat::Cpio),
            (b"070702", InitrdFormat::Cpio),
            (&[0x1f, 0x8b], InitrdFormat::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd], InitrdFormat::Zstd),
            (
                &[0xfd, b'7', b'z', b'X', b'Z', 0],
                InitrdFormat::Unsupported("xz"),
            ),
            (b"BZh", InitrdFormat::Unsupported("bzip2")),
            (&[0x89, b'L', b'Z', b'O'], InitrdFormat::Unsupported("lzo")),
            (&[0x02, 0x21, 0x4c, 0x18], InitrdFormat::Unsupported("lz4")),
            (&[0x5d, 0, 0], InitrdFormat::Unsupported("lzma")),
            // The old binary cpio and odc formats: the kernel only reads newc.
            (&[0xc7, 0x71], InitrdFormat::Unsupported("binary cpio")),
            (b"070707", InitrdFormat::Unsupported("odc cpio")),
        ];
        KNOWN
            .iter()
            .find(|(magic, _)| head.starts_with(magic))
            .map_or(InitrdFormat::Unknown, |(_, format)| *format)
    }

    /// Why the guest kernel cannot read it, or None if it can.
    pub fn refusal(self) -> Option<String> {
        let readable = "the guest kernel reads a newc cpio archive, plain or gzip or zstd";
        match self {
            InitrdFormat::Cpio | InitrdFormat::Gzip | InitrdFormat::Zstd => None,
            InitrdFormat::Unsupported(name) => Some(format!("{name} data; {readable}")),
            InitrdFormat::Unknown => Some(format!("not an initramfs; {readable}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InitrdFormat;

    #[test]
    fn cpio_gzip_and_zstd_are_read() {
        for head in [
            &b"070701000"[..],
            b"0707020",
            &[0x1f, 0x8b, 8, 0],
            &[0x28, 0xb5, 0x2f, 0xfd, 0],
        ] {
            assert_eq!(InitrdFormat::of(head).refusal(), None, "{head:?}");
        }
    }

    #[test]
    fn other_compressions_are_refused_by_name() {
        let cases: [(&[u8], &str); 5] = [
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
            (b"BZh91AY", "bzip2"),
            (&[0x89, b'L', b'Z', b'O', 0], "lzo"),
            (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
            (&[0x5d, 0, 0, 0x80], "lzma"),
        ];
        for (head, name) in cases {
            let why = InitrdFormat::of(head).refusal().expect("refused");
            assert!(why.starts_with(&format!("{name} data;")), "{why}");
        }
    }

    #[test]
    fn anything_else_and_an_empty_file_are_not_an_initramfs() {
        for head in [&b""[..], b"\x7fELF", b"hello world", b"07070"] {
            let why = InitrdFormat::of(head).refusal().expect("refused");
            assert!(why.starts_with("not an initramfs"), "{head:?}: {why}");
        }
    }
}
