//! Fuzz: merge of small arbitrary layer stacks. The input is a program: each 3 bytes add one
//! entry (layer, kind, path from a small set that collides a lot); each layer becomes a tar,
//! is expanded (hostile ones are refused, as on push) and the stack is merged both ways.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

const PATHS: &[&str] = &[
    "a",
    "a/b",
    "a/b/c",
    "d",
    "d/e",
    "a/.wh.b",
    ".wh.a",
    "a/.wh..wh..opq",
    ".wh.d",
    "d/.wh.e",
    "f",
    "a/f",
    "d/e/f",
    ".wh..wh..opq",
    "a/b/.wh.c",
    "g/h",
];

fn header(path: &str, ty: u8, size: u64, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    h[100..107].copy_from_slice(b"0000755");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000001");
    h[156] = ty;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

fuzz_target!(|data: &[u8]| {
    let mut tars: Vec<Vec<u8>> = vec![Vec::new(); 4];
    for op in data.chunks_exact(3) {
        let layer = usize::from(op[0] % 4);
        let path = PATHS[usize::from(op[2]) % PATHS.len()];
        let t = &mut tars[layer];
        match op[1] % 5 {
            0 => {
                let body = [op[2]; 3];
                t.extend_from_slice(&header(path, b'0', 3, ""));
                t.extend_from_slice(&body);
                t.resize(t.len() + 509, 0);
            }
            1 => t.extend_from_slice(&header(path, b'5', 0, "")),
            2 => t.extend_from_slice(&header(path, b'2', 0, "a/b")),
            3 => {
                let target = PATHS[usize::from(op[1] / 5) % PATHS.len()];
                t.extend_from_slice(&header(path, b'1', 0, target));
            }
            _ => t.extend_from_slice(&header(path, b'6', 0, "")),
        }
    }
    let opts = emulator::ExpandOptions {
        chunk_size: emulator::MIN_EXPAND_CHUNK_SIZE,
        ..Default::default()
    };
    let mut layers = Vec::new();
    for mut t in tars {
        t.resize(t.len() + 1024, 0);
        if let Ok(out) = emulator::expand(&t[..], None, None, Cursor::new(Vec::new()), &opts) {
            layers.push(out.index);
        }
    }
    let refs: Vec<&emulator::Index> = layers.iter().collect();
    let tree = emulator::merge(&refs).expect("expanded layers always merge");
    for l in &layers {
        let _ = emulator::overlay_form(l);
    }
    // Every merged entry's parent is a directory.
    for (p, _) in tree.entries.iter() {
        if let Some((parent, _)) = p.rsplit_once('/') {
            let d = tree.get(parent).expect("parent present");
            assert_eq!(d.entry.kind, emulator::EntryKind::Dir, "{p}");
        }
    }
});
