//! InnoDB format library against real files written by MariaDB 10.11.19 and
//! mariadb-backup 10.11.19 (tests/data/innodb, see README there).

use std::path::PathBuf;

use stagehand_innodb::backup_files::{
    self, BackupMyCnf, BackupType, BinlogInfo, Checkpoints, Naming, Version, XtrabackupInfo,
};
use stagehand_innodb::page::{self, Corruption, FspFlags, PageStatus, SpaceFormat, Unverifiable};
use stagehand_innodb::redo::{self, BackupLogWriter, LogFileHeader, MtrFraming, StopReason};

fn data(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "data", "innodb", name]
        .iter()
        .collect();
    match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

fn text(name: &str) -> String {
    String::from_utf8(data(name)).expect("fixture is UTF-8")
}

const TABLESPACES: [&str; 10] = [
    "ibdata1_first8pages",
    "s_plain.ibd",
    "s_pc.ibd",
    "s_enc.ibd",
    "s_pcenc.ibd",
    "s_zip.ibd",
    "s_crc32.ibd",
    "s_crc32_pc.ibd",
    "s_crc32_enc.ibd",
    "s_crc32_zip_enc.ibd",
];

fn pages_of(file: &[u8], fmt: &SpaceFormat) -> Vec<Vec<u8>> {
    file.chunks(fmt.physical_size).map(<[u8]>::to_vec).collect()
}

fn statuses(name: &str) -> Vec<PageStatus> {
    let file = data(name);
    let fmt = SpaceFormat::from_page0(&file).expect("page 0");
    assert_eq!(file.len() % fmt.physical_size, 0, "{name}: whole pages");
    pages_of(&file, &fmt)
        .iter()
        .enumerate()
        .map(|(n, p)| page::check_page_at(p, n as u32, &fmt).expect("right length"))
        .collect()
}

/// name, flags, full_crc32, physical size, zip size, page_compressed, encrypted
type FlagCase = (&'static str, u32, bool, usize, Option<usize>, bool, bool);

#[test]
fn fsp_flags_of_real_tablespaces() {
    let cases: [FlagCase; 10] = [
        ("ibdata1_first8pages", 0x15, true, 16384, None, false, false),
        ("s_plain.ibd", 0x15, true, 16384, None, false, false),
        ("s_pc.ibd", 0x35, true, 16384, None, true, false),
        ("s_enc.ibd", 0x15, true, 16384, None, false, true),
        ("s_pcenc.ibd", 0x35, true, 16384, None, true, true),
        ("s_zip.ibd", 0x27, false, 4096, Some(4096), false, false),
        ("s_crc32.ibd", 0x21, false, 16384, None, false, false),
        ("s_crc32_pc.ibd", 0x10021, false, 16384, None, true, false),
        ("s_crc32_enc.ibd", 0x21, false, 16384, None, false, true),
        (
            "s_crc32_zip_enc.ibd",
            0x29,
            false,
            8192,
            Some(8192),
            false,
            true,
        ),
    ];
    for (name, flags, fcrc32, phys, zip, pc, enc) in cases {
        let fmt = SpaceFormat::from_page0(&data(name)).expect(name);
        assert_eq!(fmt.flags, FspFlags(flags), "{name}");
        assert_eq!(fmt.is_full_crc32(), fcrc32, "{name}");
        assert_eq!(fmt.physical_size, phys, "{name}");
        assert_eq!(fmt.logical_size, 16384, "{name}");
        assert_eq!(fmt.zip_size, zip, "{name}");
        assert_eq!(fmt.is_page_compressed(), pc, "{name}");
        assert_eq!(fmt.is_encrypted(), enc, "{name}");
    }
    // zlib is PAGE_ZLIB_ALGORITHM = 1 in the full_crc32 flags.
    assert_eq!(FspFlags(0x35).fcrc32_compression_algo(), 1);
    assert_eq!(
        SpaceFormat::from_page0(&data("ibdata1_first8pages"))
            .expect("sys")
            .space_id,
        0
    );
}

#[test]
fn every_real_page_is_valid_or_all_zero() {
    let mut checked = 0;
    for name in TABLESPACES {
        for (n, st) in statuses(name).into_iter().enumerate() {
            checked += 1;
            let legacy_pc = name == "s_crc32_pc.ibd" && n > 0;
            if legacy_pc {
                // No checksum exists before decompression (buf0buf.cc).
                assert_eq!(
                    st,
                    PageStatus::Unverifiable(Unverifiable::LegacyPageCompressed),
                    "{name} page {n}"
                );
            } else {
                assert!(
                    matches!(st, PageStatus::Valid | PageStatus::AllZero),
                    "{name} page {n}: {st:?}"
                );
            }
        }
    }
    assert_eq!(checked, 8 + 7 * 6 + 16 + 8);
}

#[test]
fn encrypted_pages_carry_key_versions() {
    // Legacy encrypted: key version at 26; full_crc32: key version at 0.
    let legacy = data("s_crc32_enc.ibd");
    let fmt = SpaceFormat::from_page0(&legacy).expect("page 0");
    let pages = pages_of(&legacy, &fmt);
    assert!(pages
        .iter()
        .skip(1)
        .all(|p| p.get(26..30) != Some(&[0, 0, 0, 0][..])));
    let fcrc = data("s_enc.ibd");
    let fmt = SpaceFormat::from_page0(&fcrc).expect("page 0");
    let pages = pages_of(&fcrc, &fmt);
    assert!(pages
        .iter()
        .skip(1)
        .all(|p| page::fcrc32_key_version(p).ok() == Some(1)));
}

fn flip(p: &[u8], at: usize) -> Vec<u8> {
    let mut v = p.to_vec();
    if let Some(b) = v.get_mut(at) {
        *b ^= 0x40;
    }
    v
}

#[test]
fn a_flipped_byte_makes_a_page_corrupt() {
    let mut flipped = 0;
    for name in TABLESPACES {
        let file = data(name);
        let fmt = SpaceFormat::from_page0(&file).expect(name);
        for (n, p) in pages_of(&file, &fmt).iter().enumerate() {
            let st = page::check_page(p, &fmt).expect("length");
            if st != PageStatus::Valid {
                continue;
            }
            // Offset 100 is covered by every checksum variant (the
            // smallest full_crc32 compressed payload is 256 bytes).
            let bad = page::check_page(&flip(p, 100), &fmt).expect("length");
            assert!(
                matches!(bad, PageStatus::Corrupt(_)),
                "{name} page {n}: {bad:?}"
            );
            flipped += 1;
        }
    }
    assert!(flipped >= 50, "only {flipped} pages flipped");
}

#[test]
fn lsn_trailer_and_page_number_checks() {
    let file = data("s_crc32.ibd");
    let fmt = SpaceFormat::from_page0(&file).expect("page 0");
    let p = pages_of(&file, &fmt).swap_remove(3);
    let last = p.len() - 1;
    assert_eq!(
        page::check_page(&flip(&p, last), &fmt).expect("length"),
        PageStatus::Corrupt(Corruption::LsnMismatch)
    );
    assert_eq!(
        page::check_page_at(&p, 4, &fmt).expect("length"),
        PageStatus::Corrupt(Corruption::PageNumber {
            expected: 4,
            found: 3
        })
    );
    let plain = data("s_plain.ibd");
    let fmt = SpaceFormat::from_page0(&plain).expect("page 0");
    let p = pages_of(&plain, &fmt).swap_remove(3);
    assert!(page::page_lsn(&p).expect("lsn") > 12288);
    assert_eq!(page::page_number(&p).ok(), Some(3));
    assert!(matches!(
        page::check_page(&flip(&p, 20), &fmt),
        Ok(PageStatus::Corrupt(_))
    ));
    assert!(page::check_page(p.get(..100).unwrap_or(&[]), &fmt).is_err());
    let zero = vec![0u8; fmt.physical_size];
    assert!(page::is_all_zero(&zero));
    assert_eq!(
        page::check_page(&zero, &fmt).ok(),
        Some(PageStatus::AllZero)
    );
    assert_eq!(
        SpaceFormat::from_page0(&zero),
        Err(page::PageError::AllZeroPage0)
    );
    // Page 0 not flushed yet while page 1 is: not a format (flags 0 would be taken
    // for the old format and page 1 would fail as "LsnMismatch").
    let mut early = plain.clone();
    early[..fmt.physical_size].fill(0);
    assert_eq!(
        SpaceFormat::from_page0(&early),
        Err(page::PageError::AllZeroPage0)
    );
}

fn put32(p: &mut [u8], at: usize, v: u32) {
    if let Some(d) = p.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

#[test]
fn innodb_and_none_checksums_on_a_rewritten_real_page() {
    let file = data("s_crc32.ibd");
    let fmt = SpaceFormat::from_page0(&file).expect("page 0");
    let mut p = pages_of(&file, &fmt).swap_remove(3);
    let tail = p.len() - 8;
    // The crc32 algorithm writes the same value into both fields.
    let crc = page::legacy_crc32(&p).expect("crc");
    assert_eq!(p.get(0..4), Some(&crc.to_be_bytes()[..]));
    assert_eq!(p.get(tail..tail + 4), Some(&crc.to_be_bytes()[..]));
    // innodb: field 1 first, then field 2 over bytes 0..25 (which include it).
    let new = page::innodb_new_checksum(&p).expect("new");
    put32(&mut p, 0, new);
    let old = page::innodb_old_checksum(&p).expect("old");
    put32(&mut p, tail, old);
    assert_eq!(page::check_page(&p, &fmt).ok(), Some(PageStatus::Valid));
    assert!(matches!(
        page::check_page(&flip(&p, 200), &fmt),
        Ok(PageStatus::Corrupt(_))
    ));
    // none: 0xDEADBEEF in both fields is accepted without a checksum.
    put32(&mut p, 0, page::NO_CHECKSUM_MAGIC);
    put32(&mut p, tail, page::NO_CHECKSUM_MAGIC);
    assert_eq!(
        page::check_page(&flip(&p, 200), &fmt).ok(),
        Some(PageStatus::Valid)
    );
}

// --- redo log -----------------------------------------------------------

/// The server log these fixtures come from was 8 MiB; the region is the
/// log from the backup's checkpoint to its end, read around the wrap.
const SERVER_LOG_SIZE: u64 = 8 << 20;
const CHECKPOINT: u64 = 33_523_447;
const END_LSN: u64 = 33_524_752;
const LAST_LSN: u64 = 33_569_321;

#[test]
fn server_log_header() {
    let head = LogFileHeader::parse(&data("redo_server_head.bin")).expect("header");
    assert_eq!(head.header.format, redo::FORMAT_10_8);
    assert_eq!(head.header.creator, "MariaDB 10.11.19");
    assert_eq!(head.header.first_lsn, 44894);
    assert!(!head.header.is_encrypted() && !head.header.is_backup());
    let cp = head.latest_checkpoint().expect("checkpoint");
    assert!(cp.checkpoint_lsn >= CHECKPOINT && cp.end_lsn >= cp.checkpoint_lsn);
    let mut broken = data("redo_server_head.bin");
    if let Some(b) = broken.get_mut(20) {
        *b ^= 1;
    }
    assert!(matches!(
        LogFileHeader::parse(&broken),
        Err(redo::RedoError::HeaderChecksum { .. })
    ));
}

/// The captured stretch of the server's redo log, and the geometry of that log.
fn server_region() -> (Vec<u8>, redo::LogGeometry) {
    let first = LogFileHeader::parse(&data("redo_server_head.bin"))
        .expect("header")
        .header
        .first_lsn;
    let geo = redo::LogGeometry::new(first, SERVER_LOG_SIZE).expect("geometry");
    (data("redo_server_region.bin"), geo)
}

#[test]
fn parse_server_log_across_the_wrap() {
    let (region, geo) = server_region();
    let wrap = geo.next_wrap(CHECKPOINT).expect("wrap");
    assert_eq!(geo.offset(CHECKPOINT).ok(), Some(8_361_881));
    assert_eq!(
        geo.ranges(CHECKPOINT, LAST_LSN - CHECKPOINT).ok(),
        Some(vec![(8_361_881, 26_727), (12288, 19_147)])
    );
    assert!(CHECKPOINT < wrap && wrap < LAST_LSN);
    let bits = |lsn| geo.expected_bit(lsn);
    let p = redo::parse_mtrs(&region, CHECKPOINT, MtrFraming::Plain, bits);
    assert_eq!(
        (p.end_lsn, p.stop, p.mtrs.len()),
        (LAST_LSN, StopReason::NeedMoreData, 123)
    );
    // The checkpoint's FILE_CHECKPOINT mtr starts at the block's end LSN.
    let at_end = p
        .mtrs
        .iter()
        .find(|m| m.start_lsn == END_LSN)
        .expect("mtr at end_lsn");
    assert_eq!(at_end.file_checkpoint, Some(CHECKPOINT));
    assert!(p.mtrs.iter().any(|m| m.seq_lsn < wrap) && p.mtrs.iter().any(|m| m.seq_lsn >= wrap));
    // Without the flip the log "ends" at the first mtr past the wrap.
    let q = redo::parse_mtrs(&region, CHECKPOINT, MtrFraming::Plain, |_| 0);
    assert_eq!(q.stop, StopReason::SequenceBit);
    assert!(q.end_lsn < wrap);
    // Parsing in two chunks gives the same mtrs.
    let cut = region.len() / 2;
    let a = redo::parse_mtrs(
        region.get(..cut).unwrap_or(&[]),
        CHECKPOINT,
        MtrFraming::Plain,
        bits,
    );
    assert_eq!(a.stop, StopReason::NeedMoreData);
    let b = redo::parse_mtrs(
        region.get(a.valid_len()..).unwrap_or(&[]),
        a.end_lsn,
        MtrFraming::Plain,
        bits,
    );
    assert_eq!(b.end_lsn, LAST_LSN);
    assert_eq!(a.mtrs.len() + b.mtrs.len(), 123);
}

#[test]
fn backup_log_writer_matches_mariadb_backup_byte_for_byte() {
    let (region, geo) = server_region();
    let bits = |lsn| geo.expected_bit(lsn);
    let creator = redo::backup_creator(10, 11, 19);
    let mut w = BackupLogWriter::new(Vec::new(), CHECKPOINT, END_LSN, &creator).expect("writer");
    // Feed it in two parses, as a copier reading chunks would.
    let cut = region.len() / 3;
    let a = redo::parse_mtrs(
        region.get(..cut).unwrap_or(&[]),
        CHECKPOINT,
        MtrFraming::Plain,
        bits,
    );
    w.append_parsed(&region, &a).expect("append a");
    let rest = region.get(a.valid_len()..).unwrap_or(&[]);
    let b = redo::parse_mtrs(rest, a.end_lsn, MtrFraming::Plain, bits);
    w.append_parsed(rest, &b).expect("append b");
    assert_eq!(w.next_lsn(), LAST_LSN);
    let ours = w.finish().expect("finish");
    let theirs = data("redo_backup_ib_logfile0");
    assert_eq!(ours.len(), theirs.len());
    assert!(
        ours == theirs,
        "first difference at {:?}",
        ours.iter().zip(&theirs).position(|(x, y)| x != y)
    );
    // And the result reads back as one lap with sequence bit 1.
    let h = LogFileHeader::parse(&ours).expect("header");
    assert!(h.header.is_backup());
    let body = ours.get(redo::START_OFFSET as usize..).unwrap_or(&[]);
    let p = redo::parse_mtrs(body, CHECKPOINT, MtrFraming::Plain, |_| 1);
    assert_eq!(p.end_lsn, LAST_LSN);
}

#[test]
fn writer_rejects_bytes_that_are_not_whole_mtrs() {
    let (region, geo) = server_region();
    let bits = |lsn| geo.expected_bit(lsn);
    let p = redo::parse_mtrs(&region, CHECKPOINT, MtrFraming::Plain, bits);
    let mut w =
        BackupLogWriter::new(Vec::new(), CHECKPOINT, END_LSN, "Backup 10.11.19").expect("writer");
    let short = region.get(..p.valid_len() - 1).unwrap_or(&[]);
    assert!(w.append(short, &p.mtrs).is_err());
    let mut late = BackupLogWriter::new(Vec::new(), CHECKPOINT + 1, END_LSN, "Backup 10.11.19")
        .expect("writer");
    assert!(late.append_parsed(&region, &p).is_err());
}

#[test]
fn idle_backup_header_matches() {
    // An idle backup: checkpoint = end LSN = 2858843, one FILE_MODIFY..
    // FILE_CHECKPOINT mtr copied.
    let theirs = data("redo_backup_idle_ib_logfile0");
    let ours =
        redo::backup_log_header(None, 2_858_843, 2_858_843, "Backup 10.11.19").expect("header");
    assert_eq!(theirs.get(..ours.len()), Some(&ours[..]));
    let body = theirs.get(ours.len()..).unwrap_or(&[]);
    let p = redo::parse_mtrs(body, 2_858_843, MtrFraming::Plain, |_| 1);
    assert_eq!(p.mtrs.len(), 1);
    assert_eq!(p.last_file_checkpoint(), Some(2_858_843));
    let names: Vec<String> = redo::records(
        body.get(..p.mtrs[0].seq_lsn as usize - 2_858_843)
            .unwrap_or(&[]),
    )
    .filter_map(|r| match redo::file_op(&r) {
        Some(redo::FileOp::Modify { name, .. }) => Some(String::from_utf8_lossy(name).into_owned()),
        _ => None,
    })
    .collect();
    assert_eq!(
        names,
        [
            "./mysql/innodb_table_stats.ibd",
            "./mysql/innodb_index_stats.ibd"
        ]
    );
}

// --- backup directory files -------------------------------------------

#[test]
fn xtrabackup_checkpoints_as_mariadb_backup_writes_it() {
    let c = Checkpoints {
        backup_type: BackupType::FullBackuped,
        from_lsn: 0,
        to_lsn: CHECKPOINT,
        last_lsn: LAST_LSN,
        recover_binlog_info: false,
    };
    assert_eq!(
        backup_files::render_checkpoints(&c),
        text("bk_xtrabackup_checkpoints")
    );
    assert_eq!(
        backup_files::parse_checkpoints(&text("bk_xtrabackup_checkpoints")),
        Ok(c)
    );
    assert_eq!(
        backup_files::naming(Version(10, 11, 19)),
        Naming::Xtrabackup
    );
    assert_eq!(Naming::Xtrabackup.checkpoints(), "xtrabackup_checkpoints");
}

fn binlog() -> BinlogInfo {
    BinlogInfo {
        file: "binlog.000001".into(),
        position: 26_492_937,
        gtid: Some("0-1-243".into()),
    }
}

#[test]
fn binlog_info_as_mariadb_backup_writes_it() {
    assert_eq!(
        backup_files::render_binlog_info(&binlog()),
        text("bk_xtrabackup_binlog_info")
    );
    assert_eq!(
        backup_files::parse_binlog_info(&text("bk_xtrabackup_binlog_info")),
        Ok(binlog())
    );
}

#[test]
fn xtrabackup_info_as_mariadb_backup_writes_it() {
    let info = XtrabackupInfo {
        uuid: "f9c959c9-e5e3-11f1-a0b2-02fc00000001".into(),
        name: String::new(),
        tool_name: "mariadb-backup".into(),
        tool_command:
            "--backup --target-dir=/tmp/ib-test/bk4 --socket=/tmp/ib-test/s.sock --user=root".into(),
        tool_version: "10.11.19-MariaDB".into(),
        server_version: "10.11.19-MariaDB-0+deb12u1-log".into(),
        start_time: "2026-11-21 19:44:32".into(),
        end_time: "2026-11-21 19:44:33".into(),
        lock_time: 0,
        binlog: Some(binlog()),
        innodb_from_lsn: 0,
        innodb_to_lsn: CHECKPOINT,
        partial: false,
        incremental: false,
        format: "file".into(),
        compressed: false,
    };
    assert_eq!(
        backup_files::render_xtrabackup_info(&info),
        text("bk_xtrabackup_info")
    );
}

#[test]
fn backup_my_cnf_as_mariadb_backup_writes_it() {
    let cnf = BackupMyCnf {
        checksum_algorithm: "crc32".into(),
        data_file_path: "ibdata1:12M:autoextend".into(),
        log_file_size: 8 << 20,
        page_size: 16384,
        undo_directory: "./".into(),
        undo_tablespaces: 0,
        compression_level: 6,
        buffer_pool_filename: None,
        encryption_config: "plugin_dir=\"/usr/lib/mysql/plugin/\"\n\
            plugin_load=file_key_management=file_key_management\n\
            file_key_management_encryption_algorithm=aes_cbc\n\
            file_key_management_filekey=\n\
            file_key_management_filename=/tmp/ib-test/keys.txt\n\
            innodb_encrypt_log=0\n\
            innodb_encrypt_tables=OFF\n"
            .into(),
    };
    assert_eq!(
        backup_files::render_backup_my_cnf(&cnf),
        text("bk_backup-my.cnf")
    );
}

#[test]
fn encrypted_log_framing_and_writer() {
    // innodb_encrypt_log=ON: FORMAT_ENC_11, 13-byte mtr tail (sequence byte,
    // 8-byte nonce, CRC over records + nonce). Fixture: the first 52 mtrs
    // after the checkpoint, and the same prefix of mariadb-backup's file.
    const CP: u64 = 5_778_013;
    const END: u64 = 5_778_325;
    let head = LogFileHeader::parse(&data("redo_enc_server_head.bin")).expect("header");
    assert_eq!(head.header.format, redo::FORMAT_ENC_11);
    assert!(head.header.is_encrypted());
    assert_eq!(head.header.framing(), MtrFraming::Encrypted);
    let geo = redo::LogGeometry::new(head.header.first_lsn, 4 << 20).expect("geometry");
    let region = data("redo_enc_server_region.bin");
    let p = redo::parse_mtrs(&region, CP, MtrFraming::Encrypted, |l| geo.expected_bit(l));
    assert_eq!(
        (p.mtrs.len(), p.valid_len(), p.stop),
        (52, region.len(), StopReason::NeedMoreData)
    );
    assert!(p.mtrs.iter().all(|m| m.end_lsn - m.seq_lsn == 13));
    // Read as plain framing the same bytes fail at once.
    let plain = redo::parse_mtrs(&region, CP, MtrFraming::Plain, |l| geo.expected_bit(l));
    assert!(plain.mtrs.is_empty());
    let creator = redo::backup_creator(10, 11, 19);
    let mut w =
        BackupLogWriter::with_server_header(Vec::new(), Some(&head.header), CP, END, &creator)
            .expect("writer");
    w.append_parsed(&region, &p).expect("append");
    let ours = w.finish().expect("finish");
    assert!(ours == data("redo_enc_backup_prefix"));
}

/// Copies `bytes` as a tablespace file with the page copier.
fn copy_tablespace(bytes: &[u8]) -> Result<stagehand_backup::entry::CopiedFile, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    copy_tablespace_into(dir.path(), bytes, None)
}

/// Copies `bytes` as the tablespace `db/t.ibd` into `dir/out`, compressed if asked.
fn copy_tablespace_into(
    dir: &std::path::Path,
    bytes: &[u8],
    compress: Option<stagehand_backup::codec::ZstdSettings>,
) -> Result<stagehand_backup::entry::CopiedFile, String> {
    use stagehand_backup::pagecopy::{copy_file, CopyOptions};
    use stagehand_mariadb::datadir::{FileClass, SourceFile};
    let src = dir.join("t.ibd");
    std::fs::write(&src, bytes).map_err(|e| e.to_string())?;
    let out = dir.join("out");
    let file = SourceFile {
        abs: src,
        rel: "db/t.ibd".into(),
        class: FileClass::Tablespace,
        remote: None,
    };
    let opts = CopyOptions {
        chunk_bytes: 1 << 20,
        rereads: 2,
        reread_delay: std::time::Duration::from_millis(1),
        cancel: Default::default(),
        limiter: None,
        system_format: None,
        progress: Default::default(),
        compress,
    };
    copy_file(&file, &out, &opts, &mut Vec::new()).map_err(|e| e.to_string())
}

#[test]
fn a_tablespace_copied_for_a_compressing_upload_is_written_once_as_zstd_with_its_data_hash() {
    use stagehand_backup::codec::{StoredReader, ZstdSettings};
    use std::io::Read;
    let plain = data("s_plain.ibd");
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = copy_tablespace(&plain).expect("a plain copy");
    let settings = ZstdSettings {
        level: 3,
        threads: 1,
    };
    let copied = copy_tablespace_into(dir.path(), &plain, Some(settings)).expect("copied");
    // The record describes the data, as a plain copy's does; the stored form the object.
    assert_eq!(
        (copied.size, &copied.hash, copied.pages),
        (expected.size, &expected.hash, expected.pages)
    );
    let stored = copied.stored.as_ref().expect("recorded as stored");
    assert_eq!(
        (stored.path.as_str(), stored.codec.as_str()),
        ("db/t.ibd.zst", "zstd")
    );
    let out = dir.path().join("out");
    assert!(
        !out.join("db/t.ibd").exists(),
        "no plain copy is written as well"
    );
    let object = out.join(&stored.path);
    let on_disk = std::fs::metadata(&object).expect("the .zst file").len();
    assert!(
        on_disk == stored.size && on_disk < copied.size,
        "{on_disk} {stored:?}"
    );
    let mut reader = StoredReader::open(
        &object,
        stagehand_host::digest::ContentHasher::like(&stored.hash),
    )
    .expect("open");
    let mut back = Vec::new();
    reader.read_to_end(&mut back).expect("decompress");
    assert_eq!(
        reader.finish().expect("finish"),
        (stored.size, stored.hash.clone())
    );
    assert!(back == plain, "the object decompresses to the source file");
    assert_eq!(stagehand_host::digest::hash_bytes(&back), copied.hash);
}

#[test]
fn a_tablespace_whose_page_0_is_not_written_yet_is_copied_not_failed() {
    let plain = data("s_plain.ibd");
    let whole = copy_tablespace(&plain).expect("an intact tablespace copies");
    assert!(whole.pages > 0 && whole.unverified_pages == 0, "{whole:?}");
    // Pages reach the file in any order: page 0 may still be zeros while page 1 and
    // later are written. Its flags must not be read as "old format" (which made valid
    // full_crc32 pages fail as LsnMismatch).
    let fmt = SpaceFormat::from_page0(&plain).expect("page 0");
    let mut early = plain.clone();
    early[..fmt.physical_size].fill(0);
    let copied = copy_tablespace(&early).expect("copied, kept as read for the redo log");
    assert!(copied.unverified_pages > 0, "{copied:?}");
    // A page 0 that is there but damaged stays an error.
    let mut bad = plain.clone();
    bad[fmt.physical_size / 2] ^= 0xff;
    let err = copy_tablespace(&bad).expect_err("a corrupt page 0 fails");
    assert!(err.contains("page 0"), "{err}");
}
