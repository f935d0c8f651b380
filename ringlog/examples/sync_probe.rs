//! Diagnostic: times the pieces of a durable write on this machine.
use io_uring::{opcode, squeue, types, IoUring};
use ringlog::AlignedBuf;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

fn stat() -> (u64, u64) {
    let s = std::fs::read_to_string("/sys/block/vda/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if v.len() < 16 {
        return (0, 0);
    }
    (v[4], v[15])
}

fn median(mut v: Vec<u128>) -> u128 {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or("target/probe.dat".into());
    {
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all_at(&vec![0u8; 64 << 20], 0).unwrap();
        f.sync_all().unwrap();
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let buf = AlignedBuf::zeroed(4096);
    let n = 60;
    let (mut w, mut s) = (vec![], vec![]);
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(buf.as_slice(), i * 4096).unwrap();
        let t2 = Instant::now();
        f.sync_data().unwrap();
        w.push((t2 - t).as_micros());
        s.push(t2.elapsed().as_micros());
    }
    println!(
        "syscalls: O_DIRECT pwrite p50 {} us, fdatasync p50 {} us",
        median(w),
        median(s)
    );
    let mut ring = IoUring::new(8).unwrap();
    let fd = types::Fd(f.as_raw_fd());
    let (w0, f0) = stat();
    let mut lat = vec![];
    let mut results = vec![];
    for i in 0..n {
        let t = Instant::now();
        let wr = opcode::Write::new(fd, buf.as_slice().as_ptr(), 4096)
            .offset(i * 4096)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(1);
        let fs = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(2);
        unsafe {
            ring.submission().push(&wr).unwrap();
            ring.submission().push(&fs).unwrap();
        }
        ring.submit_and_wait(2).unwrap();
        let r: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        lat.push(t.elapsed().as_micros());
        results.push(r);
    }
    let (w1, f1) = stat();
    println!(
        "io_uring write+fsync linked p50 {} us; writes/op {:.2} flushes/op {:.2}; results {:?}",
        median(lat),
        (w1 - w0) as f64 / n as f64,
        (f1 - f0) as f64 / n as f64,
        &results[..2]
    );
    let mut lat = vec![];
    for i in 0..n {
        let t = Instant::now();
        let wr = opcode::Write::new(fd, buf.as_slice().as_ptr(), 4096)
            .offset(i * 4096)
            .build()
            .user_data(1);
        unsafe { ring.submission().push(&wr).unwrap() };
        ring.submit_and_wait(1).unwrap();
        ring.completion().for_each(drop);
        let fs = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(2);
        unsafe { ring.submission().push(&fs).unwrap() };
        ring.submit_and_wait(1).unwrap();
        ring.completion().for_each(drop);
        lat.push(t.elapsed().as_micros());
    }
    println!(
        "io_uring write then fsync (2 round trips) p50 {} us",
        median(lat)
    );
    let mut lat = vec![];
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(buf.as_slice(), i * 4096).unwrap();
        let fs = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(2);
        unsafe { ring.submission().push(&fs).unwrap() };
        ring.submit_and_wait(1).unwrap();
        ring.completion().for_each(drop);
        lat.push(t.elapsed().as_micros());
    }
    println!("pwrite then io_uring fsync p50 {} us", median(lat));
    let mut lat = vec![];
    for i in 0..n {
        let t = Instant::now();
        let wr = opcode::Write::new(fd, buf.as_slice().as_ptr(), 4096)
            .offset(i * 4096)
            .rw_flags(libc::RWF_DSYNC)
            .build()
            .user_data(1);
        unsafe { ring.submission().push(&wr).unwrap() };
        ring.submit_and_wait(1).unwrap();
        ring.completion().for_each(drop);
        lat.push(t.elapsed().as_micros());
    }
    println!("io_uring RWF_DSYNC write p50 {} us", median(lat));
    let mut lat = vec![];
    for i in 0..n {
        let t = Instant::now();
        let iov = libc::iovec {
            iov_base: buf.as_slice().as_ptr() as *mut _,
            iov_len: 4096,
        };
        let r =
            unsafe { libc::pwritev2(f.as_raw_fd(), &iov, 1, (i * 4096) as i64, libc::RWF_DSYNC) };
        assert_eq!(r, 4096);
        lat.push(t.elapsed().as_micros());
    }
    println!("pwritev2 RWF_DSYNC p50 {} us", median(lat));
}
