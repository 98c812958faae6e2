//! Reply compression. The whole multipart reply is one compressed stream, so the parts of a batch (often
//! similar JSON documents) share one dictionary: per-response compression, as HTTP/2 does it, cannot.
//! The stream is flushed whenever the next part is not ready yet, so the reply still streams part by part.

use std::io::Write;

use bytes::Bytes;

use crate::config::{
    Coding, CompressionConfig, MAX_BROTLI_QUALITY, MAX_GZIP_LEVEL, MAX_ZSTD_LEVEL,
};

/// How hard [`CompressionConfig::whole`] compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effort {
    /// The configured level.
    Configured,
    /// The coding's highest allowed level: for a reply that would otherwise miss TCP's first flight.
    Highest,
}

impl CompressionConfig {
    /// The coding for a request's `Accept-Encoding`: the highest q-value wins, ties go to `order`.
    /// `None` means identity.
    pub fn negotiate(&self, accept_encoding: Option<&str>) -> Option<Coding> {
        if !self.enabled {
            return None;
        }
        let header = accept_encoding?;
        let mut best: Option<(f32, usize, Coding)> = None;
        for (rank, &coding) in self.order.iter().enumerate() {
            let q = quality(header, coding.as_str());
            if q <= 0.0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((bq, brank, _)) => q > bq || (q == bq && rank < brank),
            };
            if better {
                best = Some((q, rank, coding));
            }
        }
        best.map(|(_, _, c)| c)
    }

    /// A fresh encoder for one reply.
    pub fn encoder(&self, coding: Coding) -> Encoder {
        self.encoder_with(coding, Effort::Configured)
    }

    fn encoder_with(&self, coding: Coding, effort: Effort) -> Encoder {
        let highest = effort == Effort::Highest;
        match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(if highest {
                    MAX_GZIP_LEVEL
                } else {
                    self.gzip_level
                }),
            )),
            Coding::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(
                    Vec::new(),
                    if highest {
                        MAX_ZSTD_LEVEL
                    } else {
                        self.zstd_level
                    },
                )
                .expect("zstd level within range"),
            ),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                if highest {
                    MAX_BROTLI_QUALITY
                } else {
                    self.brotli_quality
                },
                22,
            ))),
        }
    }

    /// A whole reply, in hand at once, as one compressed stream. zstd is told the input's size, so that it sizes
    /// its window and tables to it.
    pub(crate) fn whole(&self, coding: Coding, effort: Effort, input: &[u8]) -> Bytes {
        let mut encoder = self.encoder_with(coding, effort);
        if let Encoder::Zstd(zstd) = &mut encoder {
            let _ = zstd.set_pledged_src_size(Some(input.len() as u64));
        }
        encoder.write(input);
        encoder.finish()
    }
}

/// The q-value the header gives `coding` (or `*`), 0 if neither is listed.
pub(crate) fn quality(header: &str, coding: &str) -> f32 {
    let mut wildcard = None;
    for item in header.split(',') {
        let mut fields = item.split(';');
        let name = fields.next().unwrap_or("").trim();
        let q = fields
            .find_map(|f| {
                f.trim()
                    .strip_prefix("q=")
                    .and_then(|v| v.trim().parse::<f32>().ok())
            })
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return q;
        }
        if name == "*" {
            wildcard = Some(q);
        }
    }
    wildcard.unwrap_or(0.0)
}

/// One reply's compressor. Input goes in with `write`; `flush` returns what can be sent now.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Gzip(_) => "Encoder(gzip)",
            Encoder::Zstd(_) => "Encoder(zstd)",
            Encoder::Br(_) => "Encoder(br)",
        })
    }
}

// Writing into a Vec cannot fail, so the io::Results below are infallible in practice.
impl Encoder {
    pub fn write(&mut self, bytes: &[u8]) {
        let _ = match self {
            Encoder::Gzip(e) => e.write_all(bytes),
            Encoder::Zstd(e) => e.write_all(bytes),
            Encoder::Br(e) => e.write_all(bytes),
        };
    }

    /// Flushes so that everything written so far can be decoded by the client, and takes the output.
    pub fn flush(&mut self) -> Bytes {
        let out = match self {
            Encoder::Gzip(e) => {
                let _ = e.flush();
                e.get_mut()
            }
            Encoder::Zstd(e) => {
                let _ = e.flush();
                e.get_mut()
            }
            Encoder::Br(e) => {
                let _ = e.flush();
                e.get_mut()
            }
        };
        Bytes::from(std::mem::take(out))
    }

    /// Ends the stream and takes the rest of the output.
    pub fn finish(self) -> Bytes {
        let out = match self {
            Encoder::Gzip(e) => e.finish().unwrap_or_default(),
            Encoder::Zstd(e) => e.finish().unwrap_or_default(),
            Encoder::Br(e) => e.into_inner(),
        };
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn negotiation() {
        let c = CompressionConfig::default();
        assert_eq!(c.negotiate(Some("gzip, br, zstd")), Some(Coding::Zstd));
        assert_eq!(c.negotiate(Some("gzip, deflate")), Some(Coding::Gzip));
        assert_eq!(
            c.negotiate(Some("gzip;q=1, zstd;q=0.5")),
            Some(Coding::Gzip)
        );
        assert_eq!(c.negotiate(Some("zstd;q=0, *")), Some(Coding::Br));
        assert_eq!(c.negotiate(Some("identity")), None);
        assert_eq!(c.negotiate(None), None);
        let off = CompressionConfig {
            enabled: false,
            ..CompressionConfig::default()
        };
        assert_eq!(off.negotiate(Some("gzip")), None);
    }

    #[test]
    fn flushed_prefixes_decode_and_the_whole_stream_round_trips() {
        let c = CompressionConfig::default();
        for coding in [Coding::Gzip, Coding::Zstd, Coding::Br] {
            let mut e = c.encoder(coding);
            let mut wire = Vec::new();
            e.write(b"first part ");
            let first = e.flush();
            assert!(!first.is_empty(), "{coding:?} flush produced nothing");
            wire.extend_from_slice(&first);
            e.write(b"second part");
            wire.extend_from_slice(&e.flush());
            wire.extend_from_slice(&e.finish());
            let mut out = Vec::new();
            match coding {
                Coding::Gzip => flate2::read::GzDecoder::new(&wire[..])
                    .read_to_end(&mut out)
                    .unwrap(),
                Coding::Zstd => zstd::stream::read::Decoder::new(&wire[..])
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap(),
                Coding::Br => brotli::Decompressor::new(&wire[..], 4096)
                    .read_to_end(&mut out)
                    .unwrap(),
            };
            assert_eq!(out, b"first part second part");
        }
    }
}
