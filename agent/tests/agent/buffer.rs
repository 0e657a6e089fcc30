//! Disk buffer: behaviour through the public API, a proptest model, and
//! recovery from corruption of a copy of a real buffer directory.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_agent::buffer::{Appended, Buffer, BufferSettings, FullPolicy, Meta, Stored};
use muster_proto::{Payload, decode_record, encode_record, fixtures};
use muster_testkit::TempDir;
use proptest::prelude::*;

fn settings(dir: &Path, max_bytes: u64) -> BufferSettings {
    let mut s = BufferSettings::new(dir.join("buf"));
    s.max_bytes = max_bytes;
    s
}

fn payload(kind: u8) -> Payload {
    match kind % 3 {
        0 => Payload::Host(fixtures::host_sample()),
        1 => Payload::Probe(fixtures::http_probe()),
        _ => Payload::Status(fixtures::status()),
    }
}

/// Appends record `seq` (event time = seq seconds); returns its key.
fn append(b: &mut Buffer, seq: u64, kind: u8) -> u64 {
    append_at(b, seq, kind, seq * 1000)
}

fn make(seq: u64, kind: u8, at_ms: u64) -> (Meta, Vec<u8>) {
    let rec = fixtures::record(seq, payload(kind));
    let rec = muster_proto::Record { at_ms, ..rec };
    (Meta::of(&rec), encode_record(&rec).unwrap())
}

fn append_at(b: &mut Buffer, seq: u64, kind: u8, now_ms: u64) -> u64 {
    let (meta, enc) = make(seq, kind, now_ms);
    match b.append(meta, &enc, now_ms, &|_| false) {
        Appended::Stored { key } => key,
        other => panic!("append failed: {other:?}"),
    }
}

fn stored_len(seq: u64, kind: u8) -> u64 {
    (make(seq, kind, seq * 1000).1.len() + muster_agent::buffer::record::HEADER_LEN) as u64
}

fn all(b: &mut Buffer) -> Vec<Stored> {
    b.read(0, u64::MAX, usize::MAX)
}

fn seqs(b: &mut Buffer) -> Vec<u64> {
    all(b).iter().map(|s| s.meta.seq).collect()
}

fn segment_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("seg-")
        })
        .count()
}

#[test]
fn records_come_back_in_order_and_decode() {
    let t = TempDir::new().unwrap();
    let mut b = Buffer::open(settings(t.path(), 64 << 20), 0).unwrap();
    for seq in 1..=50 {
        append(&mut b, seq, seq as u8);
    }
    let got = all(&mut b);
    assert_eq!(got.len(), 50);
    for (i, s) in got.iter().enumerate() {
        let rec = decode_record(s.encoded()).unwrap();
        assert_eq!(rec.seq, i as u64 + 1);
        assert_eq!(s.meta.seq, rec.seq);
        assert_eq!(s.meta.boot, rec.boot);
        assert_eq!(s.meta.at_ms, rec.at_ms);
    }
    // Keys increase with append order.
    assert!(got.windows(2).all(|w| w[0].key < w[1].key));
    // Reads respect byte and count limits, and start where asked.
    let one = stored_len(1, 1);
    assert_eq!(b.read(0, 1, 10).len(), 1, "at least one record");
    assert_eq!(b.read(0, u64::MAX, 7).len(), 7);
    let from = got[10].key;
    assert_eq!(b.read(from, u64::MAX, 1)[0].meta.seq, 11);
    assert!(b.read(0, one * 3, 100).len() <= 3);
}

#[test]
fn survives_reopen_and_acked_records_are_gone() {
    let t = TempDir::new().unwrap();
    let s = settings(t.path(), 64 << 20);
    let keys: Vec<u64> = {
        let mut b = Buffer::open(s.clone(), 0).unwrap();
        let keys = (1..=20)
            .map(|seq| append(&mut b, seq, 0))
            .collect::<Vec<_>>();
        assert_eq!(b.remove(&keys[..5]), 5);
        assert_eq!(b.remove(&keys[..5]), 0, "removing twice is harmless");
        b.flush().unwrap();
        keys
    };
    let mut b = Buffer::open(s, 0).unwrap();
    assert_eq!(seqs(&mut b), (6..=20).collect::<Vec<_>>());
    assert_eq!(b.records(), 15);
    // New keys continue above the old ones.
    let k = append(&mut b, 21, 0);
    assert!(k > *keys.last().unwrap());
}

#[test]
fn a_second_process_cannot_share_the_directory() {
    let t = TempDir::new().unwrap();
    let s = settings(t.path(), 64 << 20);
    let _b = Buffer::open(s.clone(), 0).unwrap();
    let e = Buffer::open(s, 0).err().expect("second open must fail");
    assert!(e.to_string().contains("in use"), "{e}");
}

#[test]
fn full_buffer_drops_oldest_counts_and_persists_the_count() {
    let t = TempDir::new().unwrap();
    // Seqs 81..=100 have equal sizes (event times 81 s..100 s).
    let max = 20 * stored_len(100, 0);
    let s = settings(t.path(), max);
    {
        let mut b = Buffer::open(s.clone(), 0).unwrap();
        for seq in 1..=100 {
            append(&mut b, seq, 0);
            assert!(b.bytes() <= max, "cap exceeded at seq {seq}");
        }
        let got = seqs(&mut b);
        assert_eq!(got, (81..=100).collect::<Vec<_>>());
        assert_eq!(b.drops().full, 80);
        assert_eq!(b.drops().total(), 80);
        b.flush().unwrap();
    }
    let b = Buffer::open(s, 0).unwrap();
    assert_eq!(b.drops().full, 80, "drop counts survive a restart");
}

#[test]
fn in_flight_records_are_never_evicted() {
    let t = TempDir::new().unwrap();
    let max = 10 * stored_len(1, 0);
    let mut b = Buffer::open(settings(t.path(), max), 0).unwrap();
    let keys: Vec<u64> = (1..=10).map(|seq| append(&mut b, seq, 0)).collect();
    let protected = [keys[0], keys[1]];
    for seq in 11..=20 {
        let (meta, enc) = make(seq, 0, seq * 1000);
        b.append(meta, &enc, 0, &|k| protected.contains(&k));
    }
    let got = seqs(&mut b);
    assert_eq!(&got[..2], &[1, 2], "in-flight records kept");
    assert_eq!(&got[2..], &(13..=20).collect::<Vec<_>>()[..]);
    assert_eq!(b.drops().full, 10);
}

#[test]
fn thin_policy_keeps_one_in_n_host_samples_before_dropping_outright() {
    let t = TempDir::new().unwrap();
    let per = stored_len(1, 0);
    let mut s = settings(t.path(), 30 * per);
    s.on_full = FullPolicy::Thin { keep_one_in: 3 };
    let mut b = Buffer::open(s, 0).unwrap();
    for seq in 1..=40 {
        append(&mut b, seq, 0);
    }
    let got = seqs(&mut b);
    let d = b.drops();
    assert_eq!(d.full, 0, "thinning made enough room: {got:?}");
    assert_eq!(d.thinned, 10);
    // The oldest part is thinned to 1 in 3: 1, 4, 7, ...
    assert_eq!(&got[..4], &[1, 4, 7, 10]);
    assert_eq!(got.last(), Some(&40));
    // Keep going: once everything was thinned once, the oldest go.
    for seq in 41..=200 {
        append(&mut b, seq, 0);
    }
    let got = seqs(&mut b);
    assert!(b.drops().full > 0 || b.drops().thinned > 10);
    assert_eq!(got.last(), Some(&200));
    assert_eq!(
        b.drops().total() + got.len() as u64,
        200,
        "every record is either stored or counted"
    );
}

#[test]
fn max_age_expires_old_records() {
    let t = TempDir::new().unwrap();
    let mut s = settings(t.path(), 64 << 20);
    s.max_age = Some(Duration::from_secs(60));
    let mut b = Buffer::open(s, 0).unwrap();
    for seq in 1..=100 {
        // one record per second of event time
        append_at(&mut b, seq, 0, seq * 1000);
    }
    b.expire(100_000, &|_| false);
    let got = seqs(&mut b);
    assert_eq!(got.first(), Some(&40), "older than 60 s are gone");
    assert_eq!(b.drops().expired, 39);
}

#[test]
fn drained_segments_are_deleted_whole() {
    let t = TempDir::new().unwrap();
    let s = settings(t.path(), 512 * 1024);
    let dir = s.path.clone();
    let mut b = Buffer::open(s, 0).unwrap();
    let keys: Vec<u64> = (1..=2000).map(|seq| append(&mut b, seq, 0)).collect();
    let (segs, open) = b.segments();
    assert!(segs > 3, "{segs} segments");
    assert!(open <= muster_agent::buffer::MAX_OPEN_SEGMENTS);
    assert_eq!(segment_dirs(&dir), segs);
    b.remove(&keys[..1999]);
    b.flush().unwrap();
    assert_eq!(b.segments().0, 1, "only the head is left");
    assert_eq!(segment_dirs(&dir), 1);
    assert_eq!(seqs(&mut b), vec![2000]);
}

// ------------------------------------------------------------ proptest model

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    /// Ack the record at this index (modulo the length) of the model.
    Ack(usize),
    /// Ack the oldest n.
    AckOldest(usize),
    Reopen,
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<u8>().prop_map(Op::Append),
        2 => any::<usize>().prop_map(Op::Ack),
        1 => (0usize..20).prop_map(Op::AckOldest),
        1 => Just(Op::Reopen),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The buffer behaves like a bounded queue: order kept, acked records
    /// gone, evicted records counted, nothing else lost, across reopens.
    #[test]
    fn buffer_matches_a_bounded_queue_model(ops in proptest::collection::vec(op(), 1..120), cap in 5u64..40) {
        let t = TempDir::new().unwrap();
        let max = cap * stored_len(1, 1);
        let s = settings(t.path(), max);
        let mut b = Some(Buffer::open(s.clone(), 0).unwrap());
        // (key, seq, stored size)
        let mut model: VecDeque<(u64, u64, u64)> = VecDeque::new();
        let mut full = 0u64;
        let mut seq = 0u64;
        for op in ops {
            let buf = b.as_mut().unwrap();
            match op {
                Op::Append(kind) => {
                    seq += 1;
                    let size = stored_len(seq, kind);
                    let mut total: u64 = model.iter().map(|m| m.2).sum();
                    while total + size > max {
                        let (_, _, sz) = model.pop_front().expect("model non-empty");
                        total -= sz;
                        full += 1;
                    }
                    let key = append(buf, seq, kind);
                    if let Some(last) = model.back() {
                        prop_assert!(key > last.0, "keys increase");
                    }
                    model.push_back((key, seq, size));
                }
                Op::Ack(i) => {
                    if !model.is_empty() {
                        let (key, _, _) = model.remove(i % model.len()).unwrap();
                        prop_assert_eq!(buf.remove(&[key]), 1);
                    }
                }
                Op::AckOldest(n) => {
                    let keys: Vec<u64> = model.drain(..n.min(model.len())).map(|m| m.0).collect();
                    prop_assert_eq!(buf.remove(&keys), keys.len());
                }
                Op::Reopen => {
                    drop(b.take());
                    b = Some(reopen(&s));
                }
                Op::Flush => buf.flush().unwrap(),
            }
            let buf = b.as_mut().unwrap();
            let got: Vec<(u64, u64)> = all(buf).iter().map(|r| (r.key, r.meta.seq)).collect();
            let want: Vec<(u64, u64)> = model.iter().map(|m| (m.0, m.1)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(buf.records(), model.len() as u64);
            prop_assert_eq!(buf.bytes(), model.iter().map(|m| m.2).sum::<u64>());
            prop_assert!(buf.bytes() <= max);
            prop_assert_eq!(buf.drops().full, full);
            prop_assert_eq!(buf.drops().corrupt, 0);
        }
    }
}

// ------------------------------------------------------------ corruption

/// Builds a real buffer with `n` records (flushed, closed) and returns its path.
fn real_buffer(t: &TempDir, n: u64) -> (BufferSettings, PathBuf) {
    let s = settings(t.path(), 1 << 20);
    let mut b = Buffer::open(s.clone(), 0).unwrap();
    for seq in 1..=n {
        append(&mut b, seq, seq as u8);
    }
    b.flush().unwrap();
    drop(b);
    let dir = s.path.clone();
    (s, dir)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// Every regular file under the segment directories.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("seg-") {
            walk(&e.path(), &mut out);
        }
    }
    out.sort();
    out
}

fn largest_segment_file(dir: &Path) -> PathBuf {
    segment_files(dir)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

/// After corruption: the buffer opens, what it returns is valid and in
/// order, and it keeps working (append, read, reopen).
fn check_recovers(s: &BufferSettings, n: u64, what: &str) -> (u64, muster_proto::DropCounts) {
    let mut b = Buffer::open(s.clone(), 1_000)
        .unwrap_or_else(|e| panic!("{what}: buffer did not open: {e}"));
    let got = all(&mut b);
    let seqs: Vec<u64> = got.iter().map(|r| r.meta.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{what}: order {seqs:?}"
    );
    assert!(seqs.iter().all(|s| (1..=n).contains(s)), "{what}: {seqs:?}");
    for r in &got {
        let rec = decode_record(r.encoded()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(rec.seq, r.meta.seq, "{what}");
    }
    let survivors = got.len() as u64;
    let drops = b.drops();
    // Keeps working.
    let k = append(&mut b, n + 1, 0);
    assert_eq!(b.get(k).map(|r| r.meta.seq), Some(n + 1), "{what}");
    b.flush().unwrap();
    drop(b);
    let mut b = Buffer::open(s.clone(), 2_000).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    assert_eq!(
        all(&mut b).last().map(|r| r.meta.seq),
        Some(n + 1),
        "{what}"
    );
    (survivors, drops)
}

#[test]
fn recovers_from_corruption_of_a_real_buffer_copy() {
    const N: u64 = 300;
    let t = TempDir::new().unwrap();
    let (_, original) = real_buffer(&t, N);

    type Corrupt = fn(&Path);
    let patterns: &[(&str, Corrupt)] = &[
        ("flip bytes across the data file", |dir| {
            let f = largest_segment_file(dir);
            let mut bytes = std::fs::read(&f).unwrap();
            let len = bytes.len();
            for i in (len / 7..len).step_by(len / 9 + 1) {
                bytes[i] ^= 0x5a;
            }
            std::fs::write(&f, bytes).unwrap();
        }),
        ("torn tail: data file cut in half", |dir| {
            let f = largest_segment_file(dir);
            let len = std::fs::metadata(&f).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }),
        ("a zeroed 4 KiB block", |dir| {
            let f = largest_segment_file(dir);
            let mut bytes = std::fs::read(&f).unwrap();
            let at = bytes.len() / 3;
            let end = (at + 4096).min(bytes.len());
            bytes[at..end].fill(0);
            std::fs::write(&f, bytes).unwrap();
        }),
        ("every segment file garbage", |dir| {
            for f in segment_files(dir) {
                let len = std::fs::metadata(&f).unwrap().len() as usize;
                std::fs::write(&f, vec![0xa5; len.max(16)]).unwrap();
            }
        }),
        ("segment config deleted", |dir| {
            for f in segment_files(dir) {
                if f.file_name().unwrap() == "conf" {
                    std::fs::remove_file(f).unwrap();
                }
            }
        }),
        ("segment replaced by a file", |dir| {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.file_name().unwrap().to_string_lossy().starts_with("seg-") {
                    std::fs::remove_dir_all(&p).unwrap();
                    std::fs::write(&p, b"not a directory").unwrap();
                }
            }
        }),
        ("state file garbage", |dir| {
            std::fs::write(dir.join("state.json"), b"{\"drops\": garbage").unwrap();
        }),
        ("buffer path is a file", |dir| {
            std::fs::remove_dir_all(dir).unwrap();
            std::fs::write(dir, b"oops").unwrap();
        }),
    ];
    for (i, (what, corrupt)) in patterns.iter().enumerate() {
        let copy = t.path().join(format!("copy-{i}"));
        copy_dir(&original, &copy);
        corrupt(&copy);
        let mut s = BufferSettings::new(copy.clone());
        s.max_bytes = 1 << 20;
        let (survivors, drops) = check_recovers(&s, N, what);
        eprintln!(
            "{what}: {survivors} of {N} records survived; corrupt {} resets {}",
            drops.corrupt, drops.resets
        );
        if *what == "state file garbage" {
            assert_eq!(survivors, N, "{what}: the records are intact");
            assert_eq!(drops.resets, 1, "{what}");
        }
        match *what {
            "state file garbage" | "buffer path is a file" => {
                // The counts themselves were lost: that is a reset, said so.
                assert_eq!(drops.resets, 1, "{what}");
            }
            _ => assert_eq!(
                survivors + drops.corrupt,
                N,
                "{what}: every record survived or was counted as corrupt"
            ),
        }
    }
}

/// Reopens a buffer this process just closed. The `LOCK` file's flock goes
/// with the last descriptor of its open file: a child that another test of
/// this binary is forking at that moment holds a copy until its exec closes
/// it (close-on-exec), so an instant reopen can see `Locked` for a moment.
/// A restarted agent is a new process and never meets this.
fn reopen(s: &BufferSettings) -> Buffer {
    muster_testkit::eventually_blocking(
        "the buffer's lock released",
        std::time::Duration::from_secs(10),
        || match Buffer::open(s.clone(), 0) {
            Err(e @ muster_agent::buffer::BufferError::Locked(_)) => Err(e.to_string()),
            other => Ok(other.unwrap()),
        },
    )
}
