//! Reading a file one window ahead of the code that consumes it. A copy thread that reads
//! a window, then checks, hashes and writes it, leaves the disk idle while it works and
//! its CPU idle while it waits for the disk: a direct read has no kernel read-ahead to
//! hide that. Here a second thread reads window N+1 while the caller handles window N,
//! with two buffers taking turns, so memory stays at two windows per copy thread.
//!
//! Hand-written with two bounded std channels: an async runtime or an io_uring crate
//! would be far heavier for one read in flight.

use crate::source::{aligned, Source};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// A window the reader filled: where it starts and what the read returned.
struct Filled {
    buf: Vec<u8>,
    offset: u64,
    read: io::Result<usize>,
}

/// Calls `each(window, offset, n)` for the consecutive windows of `window_len` bytes of
/// `input` up to `size` (fewer bytes at the end, or where the file ends first). Files of
/// one window are read on the calling thread with `scratch`; larger ones with a reader
/// thread one window ahead. Stops at the first error of `each`, or of a read
/// (`read_error` turns it into the caller's error type).
pub fn for_each_window<E>(
    input: &Source,
    size: u64,
    window_len: usize,
    scratch: &mut Vec<u8>,
    mut each: impl FnMut(&mut [u8], u64, usize) -> Result<(), E>,
    read_error: impl Fn(io::Error) -> E,
) -> Result<(), E> {
    if size <= window_len as u64 {
        return in_turn(input, size, window_len, scratch, each, read_error);
    }
    let stop = AtomicBool::new(false);
    let (full_tx, full_rx) = sync_channel::<Filled>(1);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(2);
    std::thread::scope(|scope| {
        scope.spawn(|| read_ahead(input, size, window_len, &stop, free_rx, full_tx));
        // Fresh buffers rather than the caller's scratch: two large files' worth of
        // allocation is nothing against their copy, and no buffer has to be handed back.
        for _ in 0..2 {
            // The reader holds the receiver until it ends; it cannot have ended yet.
            let _ = free_tx.send(Vec::new());
        }
        let result = consume(&full_rx, &free_tx, window_len, &mut each, &read_error);
        // Tell the reader to stop and unblock it (it may wait for a free buffer or for
        // room to hand a window over); the scope then waits for it to end.
        stop.store(true, Ordering::Relaxed);
        drop(free_tx);
        drop(full_rx);
        result
    })
}

/// The caller's side: each filled window in order, handed back to the reader when done.
fn consume<E>(
    full_rx: &Receiver<Filled>,
    free_tx: &SyncSender<Vec<u8>>,
    window_len: usize,
    each: &mut impl FnMut(&mut [u8], u64, usize) -> Result<(), E>,
    read_error: &impl Fn(io::Error) -> E,
) -> Result<(), E> {
    // The reader ends its channel after the last window (or a failed read).
    while let Ok(Filled {
        mut buf,
        offset,
        read,
    }) = full_rx.recv()
    {
        let n = read.map_err(read_error)?;
        if n == 0 {
            break; // the file shrank while copied
        }
        each(aligned(&mut buf, window_len), offset, n)?;
        // The reader may already have read the last window and gone.
        let _ = free_tx.send(buf);
    }
    Ok(())
}

/// The reader thread: fills free buffers with consecutive windows until `size`, the end
/// of the file, a failed read, or `stop`.
fn read_ahead(
    input: &Source,
    size: u64,
    window_len: usize,
    stop: &AtomicBool,
    free_rx: Receiver<Vec<u8>>,
    full_tx: SyncSender<Filled>,
) {
    let mut offset = 0;
    while offset < size && !stop.load(Ordering::Relaxed) {
        let Ok(mut buf) = free_rx.recv() else { return };
        let want = (size - offset).min(window_len as u64) as usize;
        let read = input.read_at(aligned(&mut buf, window_len), want, offset);
        let got = match &read {
            Ok(n) if *n > 0 => Some(*n),
            _ => None,
        };
        if full_tx.send(Filled { buf, offset, read }).is_err() {
            return;
        }
        match got {
            Some(n) => offset += n as u64,
            None => return,
        }
    }
}

/// One read at a time on the calling thread (small files: no thread for one window).
fn in_turn<E>(
    input: &Source,
    size: u64,
    window_len: usize,
    scratch: &mut Vec<u8>,
    mut each: impl FnMut(&mut [u8], u64, usize) -> Result<(), E>,
    read_error: impl Fn(io::Error) -> E,
) -> Result<(), E> {
    let window = aligned(scratch, window_len);
    let mut offset = 0;
    while offset < size {
        let want = (size - offset).min(window_len as u64) as usize;
        let n = input.read_at(window, want, offset).map_err(&read_error)?;
        if n == 0 {
            break;
        }
        each(window, offset, n)?;
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tests::file_of;

    fn read_back(path: &std::path::Path, size: u64, window: usize) -> Result<Vec<u8>, String> {
        let src = Source::open(path, true).unwrap();
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        for_each_window(
            &src,
            size,
            window,
            &mut scratch,
            |w, offset, n| {
                assert_eq!(offset, out.len() as u64, "windows arrive in order");
                out.extend_from_slice(&w[..n]);
                Ok(())
            },
            |e| e.to_string(),
        )?;
        Ok(out)
    }

    #[test]
    fn every_window_arrives_once_and_in_order_up_to_the_size_asked() {
        let window = 64 << 10;
        // One window (read in turn), several with a short tail, and exact multiples.
        for len in [
            1000,
            window,
            5 * window + 4096,
            7 * window + 333,
            8 * window,
        ] {
            let (_d, path, data) = file_of(len);
            let back = read_back(&path, len as u64, window).unwrap();
            assert!(back == data, "len {len}: the bytes read differ");
        }
        // A size below the file's: what grew after the copy started is not read.
        let (_d, path, data) = file_of(4 * window);
        let back = read_back(&path, 3 * window as u64 + 10, window).unwrap();
        assert!(back[..] == data[..3 * window + 10]);
        // A size above the file's (it shrank): stops at its end.
        let back = read_back(&path, 9 * window as u64, window).unwrap();
        assert!(back == data);
    }

    #[test]
    fn an_error_of_the_consumer_stops_the_reader_and_is_returned() {
        let window = 64 << 10;
        let (_d, path, _data) = file_of(50 * window);
        let src = Source::open(&path, true).unwrap();
        let mut seen = 0;
        let err = for_each_window(
            &src,
            50 * window as u64,
            window,
            &mut Vec::new(),
            |_, _, _| {
                seen += 1;
                if seen == 3 {
                    Err("stop here".to_string())
                } else {
                    Ok(())
                }
            },
            |e| e.to_string(),
        )
        .expect_err("the consumer failed");
        assert_eq!(err, "stop here");
        assert_eq!(seen, 3, "no window after the failed one");
    }
}
