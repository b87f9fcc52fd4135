use std::time::Instant;
fn main() {
    for (cache, size, flush, index) in [
        (4u64 << 20, 2000usize, true, true),
        (4 << 20, 2000, false, true),
        (4 << 20, 2000, false, false),
        (4 << 20, 1000, false, false),
        (4 << 20, 0, false, true),
    ] {
        let dir = std::env::temp_dir().join(format!("scratch-sled-{cache}-{size}"));
        let _ = std::fs::remove_dir_all(&dir);
        let db = sled::Config::new()
            .path(&dir)
            .cache_capacity(cache)
            .open()
            .unwrap();
        let t = db.open_tree("interactions").unwrap();
        let ix = db.open_tree("index").unwrap();
        let value = vec![b'x'; size];
        let n = 20_000u64;
        let start = Instant::now();
        for i in 0..n {
            let mut k = b"bench\0".to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            t.insert(k, value.clone()).unwrap();
            let mut k2 = b"bench\0".to_vec();
            k2.extend_from_slice(&[7u8; 16]);
            k2.extend_from_slice(&i.wrapping_mul(0x9E3779B97F4A7C15).to_be_bytes());
            if index {
                ix.insert(k2, &[][..]).unwrap();
            }
            if flush && i % 64 == 0 {
                db.flush().unwrap();
            }
        }
        println!(
            "flush {flush} index {index} cache {}MiB value {size}: {:?}/insert",
            cache >> 20,
            start.elapsed() / n as u32
        );
        drop(t);
        drop(ix);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
