//! Snapshots: a consistent copy of the committed state at an index, streamed
//! in checksummed chunks while the source keeps applying, resumable, and
//! installed atomically on the receiver.
//!
//! What it does:
//! - Source ([`Engine::snapshot_begin`], [`Engine::snapshot_next`]): lists
//!   the committed tree at start index `S`, then copies it *fuzzily* (each
//!   chunk reads the files as they are when it is made, while applies go on
//!   between chunks), while a journal records every whole delta applied after
//!   `S`. After the data it streams the journal (`REPLAY` chunks) up to `E`,
//!   the index the committed state was at when the copy finished (every byte
//!   copied was read at or before it), and finally `END (E, term_E, hash_E,
//!   bound)`.
//!   Deltas applied after `E` are not needed, so a transfer ends even while
//!   the source keeps applying faster than it streams. Chunk `k` always restarts from the same position
//!   (file, offset) or (journal entry, part), so a transfer resumes from any
//!   chunk the receiver asks for ([`Engine::snapshot_rewind`]).
//! - Receiver ([`Engine::install_begin`], [`Engine::install_chunk`]): writes
//!   chunks in order into `base.<gen+1>/`, applying the replayed deltas with
//!   the same idempotent operations, then syncs the whole new tree, checks its
//!   hash against `hash_E`, and commits by writing the `meta` record that
//!   names `base.<gen+1>` at index `E` (one atomic slot write); only then is
//!   the old base removed and `live/` rebuilt.
//!
//! Why the fuzzy copy plus replay is exact: every byte of the result is
//! either never changed after `S` (so any read of it is right) or last set by
//! a delta in `(S, E]`, which the replay applies after the copy in log order;
//! the operations are absolute assignments (docs/DELTA.md). The receiver
//! proves it: the installed tree must hash to `hash_E`.
//!
//! What it does not do: survive a restart of either side mid-transfer (the
//! receiver's partial `base.<gen+1>` is garbage at restart and the transfer
//! starts over); decide when to snapshot or which peer needs one.
//!
//! Chunk layout (little-endian), `CHUNK_HEADER_BYTES` = 40:
//! ```text
//!  0 magic u32 = "BKSN"  4 version u16 = 1  6 kind u8  7 zero u8
//!  8 snapshot_id u64    16 seq u64         24 payload_len u32  28 zero u32
//! 32 checksum u64 = xxh3_64(bytes 0..32 ‖ payload)          40 payload
//! ```
//! Kinds: 1 DATA (delta records), 2 REPLAY (one whole delta part), 3 END
//! (`index u64, term u64, hash u128, bound u64`: the log position and hash
//! of the state, and its replay bound).
//!
//! A source still replaying its log after a crash (`recovering`) sends its
//! state as it is, with its replay bound: the files may hold effects of
//! committed entries up to the bound, and the receiver installs them as a
//! recovering state with the same bound (recorded in `meta`), so it
//! replays the same entries over the same bytes and reaches the same exact
//! state. Without this, a cluster whose up-to-date servers had all
//! restarted could not catch up a server that needs a snapshot, and the
//! entries up to the bound could never commit.

use xxhash_rust::xxh3::Xxh3;

use super::engine::{
    apply_op, base_dir_name, remove_recursive, scan_tree, Engine, EngineError, Journal,
};
use super::format::{self, DecodeError, Encoder, Op, OpIter, HEADER_BYTES};
use super::index::{Node, StateHash, PAGE_BYTES};
use super::meta::{self, MetaRecord};
use super::tree::{join, FileTree, Kind};

const MAGIC: u32 = u32::from_le_bytes(*b"BKSN");
const VERSION: u16 = 3;
pub const CHUNK_HEADER_BYTES: usize = 40;
const KIND_DATA: u8 = 1;
const KIND_REPLAY: u8 = 2;
const KIND_END: u8 = 3;
/// END: index u64, term u64, hash u128, replay bound u64.
const END_PAYLOAD_BYTES: usize = 40;

/// What an END chunk says.
struct End {
    index: u64,
    term: u64,
    hash: StateHash,
    /// 0, or the source was still replaying its log after a crash: the
    /// state may hold effects of committed entries up to here.
    bound: u64,
}

/// Below this much room a data chunk is closed rather than split further.
const CHUNK_ROOM_MIN: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pos {
    Data { entry: usize, offset: u64 },
    Replay { entry: usize, part: usize },
    Finished,
}

/// The sending side of one snapshot transfer.
#[derive(Debug)]
pub struct SnapshotSource {
    id: u64,
    start_index: u64,
    entries: Vec<(String, Option<u32>, u32)>,
    positions: Vec<Pos>,
    cursor: Pos,
    /// The committed state (index, term, hash) when the copy finished: the
    /// replay stops there, so a transfer ends even while the source keeps
    /// applying faster than it streams.
    /// The index, term and hash of the state the copy ends at, and the
    /// replay bound if that state is still being replayed (0 if exact).
    end: Option<(u64, u64, StateHash, u64)>,
}

impl SnapshotSource {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The index the fuzzy copy started at (the result is at the END index).
    pub fn start_index(&self) -> u64 {
        self.start_index
    }

    /// Chunks produced so far (the next chunk's sequence number).
    pub fn next_seq(&self) -> u64 {
        self.positions.len() as u64
    }
}

/// The receiving side of one snapshot transfer.
#[derive(Debug)]
pub struct SnapshotInstall {
    id: u64,
    next_seq: u64,
    gen: u64,
    dir: String,
    bytes_received: u64,
}

impl SnapshotInstall {
    /// The chunk the receiver needs next (ask the source to rewind here
    /// after a lost connection).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }
}

/// Where an install stands after a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallProgress {
    NeedMore {
        next_seq: u64,
    },
    Installed {
        index: u64,
        term: u64,
        state_hash: StateHash,
    },
}

impl<T: FileTree> Engine<T> {
    /// Starts a snapshot of the committed state (one source at a time: a
    /// new one replaces an older one, which then fails).
    pub fn snapshot_begin(&mut self) -> Result<SnapshotSource, EngineError> {
        if let Some(index) = self.diverged_at {
            return Err(EngineError::IsDiverged { index });
        }
        // A state still being replayed after a crash is sent as it is, with
        // its replay bound (the receiver replays the same entries over the
        // same bytes): a cluster whose up-to-date servers all restarted must
        // still be able to catch up a server that needs a snapshot before
        // the entries up to the bound can commit.
        let previous = self.journal.as_ref().map_or(0, |j| j.snapshot_id);
        let mut hasher = Xxh3::new();
        hasher.update(&previous.to_le_bytes());
        hasher.update(&self.state_index.to_le_bytes());
        hasher.update(&self.committed.hash().to_le_bytes());
        hasher.update(&self.meta_counter.to_le_bytes());
        let id = hasher.digest() | 1;
        let entries = self
            .committed
            .iter()
            .map(|(path, node)| match node {
                Node::Dir { mode } => (path.clone(), Some(*mode), 0),
                Node::File(file) => (path.clone(), None, file.mode),
            })
            .collect();
        self.journal = Some(Journal {
            snapshot_id: id,
            ..Journal::default()
        });
        Ok(SnapshotSource {
            id,
            start_index: self.state_index,
            entries,
            positions: Vec::new(),
            cursor: Pos::Data {
                entry: 0,
                offset: 0,
            },
            end: None,
        })
    }

    /// Stops recording the journal for `source`.
    pub fn snapshot_end(&mut self, source: SnapshotSource) {
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.snapshot_id == source.id)
        {
            self.journal = None;
        }
    }

    /// Makes the next chunk of `source` be chunk `seq` again (resume).
    pub fn snapshot_rewind(
        &mut self,
        source: &mut SnapshotSource,
        seq: u64,
    ) -> Result<(), EngineError> {
        let seq = seq as usize;
        if seq > source.positions.len() {
            return Err(EngineError::Snapshot(format!(
                "cannot resume at chunk {seq}: only {} produced",
                source.positions.len()
            )));
        }
        if seq < source.positions.len() {
            source.cursor = source.positions[seq];
            source.positions.truncate(seq);
        }
        Ok(())
    }

    /// The next chunk of `source`, or `None` after END.
    pub fn snapshot_next(
        &mut self,
        source: &mut SnapshotSource,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        match &self.journal {
            Some(j) if j.snapshot_id == source.id && !j.overflowed => {}
            Some(j) if j.snapshot_id == source.id => {
                return Err(EngineError::Snapshot(
                    "journal grew past its bound; start again".into(),
                ))
            }
            _ => {
                return Err(EngineError::Snapshot(
                    "snapshot source replaced or ended".into(),
                ))
            }
        }
        let seq = source.positions.len() as u64;
        let start = source.cursor;
        let chunk = match start {
            Pos::Finished => return Ok(None),
            Pos::Data { entry, .. } if entry >= source.entries.len() => {
                // Every byte copied was read at or before this state; every
                // delta up to it is in the journal.
                let bound = if self.recovering {
                    self.replay_bound
                } else {
                    0
                };
                source.end = Some((
                    self.state_index,
                    self.state_term,
                    self.committed.hash(),
                    bound,
                ));
                source.cursor = Pos::Replay { entry: 0, part: 0 };
                return self.snapshot_next(source);
            }
            Pos::Data { .. } => {
                let payload = self.data_chunk(source)?;
                seal_chunk(source.id, seq, KIND_DATA, &payload)
            }
            Pos::Replay { entry, part } => {
                let journal = self.journal.as_ref().expect("checked above");
                let (end_index, end_term, end_hash, end_bound) =
                    source.end.expect("the replay starts after the copy");
                if entry < journal.entries.len() && journal.entries[entry].0 <= end_index {
                    let parts = &journal.entries[entry].1;
                    let chunk = seal_chunk(source.id, seq, KIND_REPLAY, &parts[part]);
                    source.cursor = if part + 1 < parts.len() {
                        Pos::Replay {
                            entry,
                            part: part + 1,
                        }
                    } else {
                        Pos::Replay {
                            entry: entry + 1,
                            part: 0,
                        }
                    };
                    chunk
                } else {
                    let mut payload = Vec::with_capacity(END_PAYLOAD_BYTES);
                    payload.extend_from_slice(&end_index.to_le_bytes());
                    payload.extend_from_slice(&end_term.to_le_bytes());
                    payload.extend_from_slice(&end_hash.to_le_bytes());
                    payload.extend_from_slice(&end_bound.to_le_bytes());
                    source.cursor = Pos::Finished;
                    seal_chunk(source.id, seq, KIND_END, &payload)
                }
            }
        };
        source.positions.push(start);
        Ok(Some(chunk))
    }

    /// Fills one DATA payload from the source's cursor.
    fn data_chunk(&mut self, source: &mut SnapshotSource) -> Result<Vec<u8>, EngineError> {
        let limit = self.config.snapshot_chunk_bytes;
        let mut encoder = Encoder::new(limit + HEADER_BYTES);
        while let Pos::Data { entry, offset } = source.cursor {
            let Some((path, dir_mode, file_mode)) = source.entries.get(entry).cloned() else {
                break;
            };
            let room = limit.saturating_sub(encoder.current_bytes() + 3 + path.len() + 32);
            if room < CHUNK_ROOM_MIN {
                break;
            }
            let base_path = join(&self.base_dir, &path);
            let next_entry = Pos::Data {
                entry: entry + 1,
                offset: 0,
            };
            if let Some(mode) = dir_mode {
                encoder.push(&Op::Mkdir { path: &path, mode });
                source.cursor = next_entry;
                continue;
            }
            let size = match self.tree.stat(&base_path)? {
                Some(m) if m.kind == Kind::File => m.size_bytes,
                // Removed or replaced since the listing: the journal's replay
                // reproduces whatever is there at the end.
                _ => {
                    source.cursor = next_entry;
                    continue;
                }
            };
            if offset == 0 {
                encoder.push(&Op::Create {
                    path: &path,
                    mode: file_mode,
                });
                encoder.push(&Op::SetSize {
                    path: &path,
                    size_bytes: size,
                });
            }
            let room = limit.saturating_sub(encoder.current_bytes() + 3 + path.len() + 32);
            let (next_offset, runs) = self
                .tree
                .with_file(&base_path, |bytes| copy_runs(bytes, offset, room))?;
            for (at, data) in &runs {
                encoder.push(&Op::Write {
                    path: &path,
                    offset: *at,
                    data,
                });
            }
            source.cursor = if next_offset >= size {
                next_entry
            } else {
                Pos::Data {
                    entry,
                    offset: next_offset,
                }
            };
        }
        let mut payloads = encoder.into_payloads();
        assert_eq!(payloads.len(), 1, "a data chunk must fit one payload");
        Ok(payloads.pop().expect("one payload"))
    }

    /// Prepares to receive snapshot `snapshot_id` into a fresh directory.
    pub fn install_begin(&mut self, snapshot_id: u64) -> Result<SnapshotInstall, EngineError> {
        let gen = self.gen + 1;
        let dir = base_dir_name(gen);
        remove_recursive(&mut self.tree, &dir)?;
        self.tree.mkdir(&dir, 0o755)?;
        Ok(SnapshotInstall {
            id: snapshot_id,
            next_seq: 0,
            gen,
            dir,
            bytes_received: 0,
        })
    }

    /// Consumes one chunk; chunks must come in sequence (an out-of-order
    /// chunk is refused and the sender should rewind to `next_seq`).
    pub fn install_chunk(
        &mut self,
        install: &mut SnapshotInstall,
        chunk: &[u8],
    ) -> Result<InstallProgress, EngineError> {
        let corrupt = |source| EngineError::Corrupt { index: 0, source };
        let (kind, id, seq, payload) = parse_chunk(chunk).map_err(corrupt)?;
        if id != install.id {
            return Err(EngineError::Snapshot(format!(
                "chunk of snapshot {id:#x}, expected {:#x}",
                install.id
            )));
        }
        if seq != install.next_seq {
            return Err(EngineError::Snapshot(format!(
                "chunk {seq} out of order, expected {}",
                install.next_seq
            )));
        }
        install.bytes_received += chunk.len() as u64;
        match kind {
            KIND_DATA => self.install_ops(install, payload)?,
            KIND_REPLAY => {
                let (_, ops) = format::parse_part(payload).map_err(corrupt)?;
                self.install_ops(install, ops)?;
            }
            KIND_END => {
                if payload.len() != END_PAYLOAD_BYTES {
                    return Err(corrupt(DecodeError::Truncated("END chunk")));
                }
                let index = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                let term = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
                let hash = u128::from_le_bytes(payload[16..32].try_into().expect("16 bytes"));
                let bound = u64::from_le_bytes(payload[32..40].try_into().expect("8 bytes"));
                install.next_seq += 1;
                self.install_finish(
                    install,
                    End {
                        index,
                        term,
                        hash,
                        bound,
                    },
                )?;
                return Ok(InstallProgress::Installed {
                    index,
                    term,
                    state_hash: hash,
                });
            }
            _ => return Err(corrupt(DecodeError::BadHeader("unknown chunk kind"))),
        }
        install.next_seq += 1;
        Ok(InstallProgress::NeedMore {
            next_seq: install.next_seq,
        })
    }

    fn install_ops(
        &mut self,
        install: &SnapshotInstall,
        payload: &[u8],
    ) -> Result<(), EngineError> {
        for op in OpIter::new(payload) {
            let op = op.map_err(|source| EngineError::Corrupt { index: 0, source })?;
            apply_op(&mut self.tree, &install.dir, &op)?;
        }
        Ok(())
    }

    /// Verifies, syncs and commits the received tree (see the module docs).
    fn install_finish(&mut self, install: &SnapshotInstall, end: End) -> Result<(), EngineError> {
        let End {
            index,
            term,
            hash,
            bound,
        } = end;
        // Not ahead of a sound state, or behind this server's checkpoint:
        // its log may be released up to the checkpoint, so it could replay
        // neither from the snapshot nor from its own state afterwards
        // (replica seed 404534515: a server still replaying its log after
        // a crash had checkpointed past the snapshot of a leader whose
        // apply lagged).
        let sound_and_ahead =
            self.diverged_at.is_none() && !self.recovering && index <= self.state_index;
        if sound_and_ahead || index < self.checkpoint_index() {
            remove_recursive(&mut self.tree, &install.dir)?;
            return Err(EngineError::SnapshotBehind {
                index,
                state_index: self.state_index,
            });
        }
        let committed = scan_tree(&mut self.tree, &install.dir)?;
        if committed.hash() != hash {
            remove_recursive(&mut self.tree, &install.dir)?;
            return Err(EngineError::Snapshot(format!(
                "installed tree hashes to {:#x}, source said {hash:#x}",
                committed.hash()
            )));
        }
        let mut files = Vec::new();
        let mut dirs = vec![String::new(), install.dir.clone()];
        for (path, node) in committed.iter() {
            match node {
                Node::File(_) => files.push(join(&install.dir, path)),
                Node::Dir { .. } => dirs.push(join(&install.dir, path)),
            }
        }
        self.tree.sync(&files, &dirs)?;
        self.meta_counter += 1;
        meta::write(
            &mut self.tree,
            &MetaRecord {
                counter: self.meta_counter,
                applied_index: index,
                gen: install.gen,
                state_hash: hash,
                applied_term: term,
                replay_bound: bound,
            },
        )?;
        self.switch_base(install.gen, index, term, committed, bound)
    }
}

/// Non-zero page runs of `bytes` from `offset`, at most `room` bytes in all.
/// Returns the offset to continue from and the runs.
fn copy_runs(bytes: &[u8], offset: u64, room: usize) -> (u64, Vec<(u64, Vec<u8>)>) {
    let mut at = offset as usize;
    let mut used = 0usize;
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    while at < bytes.len() && used + 13 < room {
        let end = (at - at % PAGE_BYTES + PAGE_BYTES).min(bytes.len());
        let page = &bytes[at..end];
        if page.iter().all(|b| *b == 0) {
            at = end; // Zero pages are implied by SetSize.
            continue;
        }
        let take = page.len().min(room - used - 13);
        match runs.last_mut() {
            Some((start, data)) if *start as usize + data.len() == at => {
                data.extend_from_slice(&page[..take])
            }
            _ => {
                used += 13;
                runs.push((at as u64, page[..take].to_vec()));
            }
        }
        used += take;
        at += take;
    }
    (at as u64, runs)
}

fn seal_chunk(id: u64, seq: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut chunk = Vec::with_capacity(CHUNK_HEADER_BYTES + payload.len());
    chunk.extend_from_slice(&MAGIC.to_le_bytes());
    chunk.extend_from_slice(&VERSION.to_le_bytes());
    chunk.push(kind);
    chunk.push(0);
    chunk.extend_from_slice(&id.to_le_bytes());
    chunk.extend_from_slice(&seq.to_le_bytes());
    chunk.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    chunk.extend_from_slice(&0u32.to_le_bytes());
    let mut hasher = Xxh3::new();
    hasher.update(&chunk);
    hasher.update(payload);
    chunk.extend_from_slice(&hasher.digest().to_le_bytes());
    chunk.extend_from_slice(payload);
    chunk
}

/// Parses a chunk: `(kind, snapshot_id, seq, payload)`. Never panics.
pub fn parse_chunk(chunk: &[u8]) -> Result<(u8, u64, u64, &[u8]), DecodeError> {
    if chunk.len() < CHUNK_HEADER_BYTES {
        return Err(DecodeError::Truncated("chunk shorter than its header"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(chunk[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(chunk[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(0) != MAGIC {
        return Err(DecodeError::BadMagic(u32_at(0)));
    }
    let version = u16::from_le_bytes([chunk[4], chunk[5]]);
    if version != VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    if chunk[7] != 0 || u32_at(28) != 0 {
        return Err(DecodeError::BadHeader("reserved chunk bits set"));
    }
    if chunk.len() != CHUNK_HEADER_BYTES + u32_at(24) as usize {
        return Err(DecodeError::Truncated("chunk length differs from header"));
    }
    let mut hasher = Xxh3::new();
    hasher.update(&chunk[..32]);
    hasher.update(&chunk[CHUNK_HEADER_BYTES..]);
    if hasher.digest() != u64_at(32) {
        return Err(DecodeError::BadChecksum);
    }
    Ok((
        chunk[6],
        u64_at(8),
        u64_at(16),
        &chunk[CHUNK_HEADER_BYTES..],
    ))
}
