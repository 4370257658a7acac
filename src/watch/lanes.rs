//! Scans of `quarry watch`, off its tick loop: a light lane (CPU, miners,
//! preload, persistence) and a deep lane (every check), each a thread that
//! runs one scan at a time. The loop keeps ticking, feeding metrics and
//! petting the watchdog while a scan runs; a request for a busy lane waits
//! as that lane's one pending request (the latest wins), so a deep scan that
//! takes a minute on a fork storm never delays the light scan that reports a
//! new miner (measured before: 41 s instead of one 5 s tick, issue 21).

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use crate::host::Host;
use crate::report::Report;
use crate::rules::Rules;
use crate::scan::{self, Check, ScanOptions};

/// The checks of a light scan.
pub const LIGHT: [Check; 4] = [Check::Cpu, Check::Miner, Check::Preload, Check::Persistence];

/// A finished scan.
pub struct Done {
    pub why: String,
    pub deep: bool,
    pub took: Duration,
    pub report: io::Result<Report>,
}

struct Lane {
    tx: Sender<String>,
    busy_since: Option<Instant>,
    pending: Option<String>,
}

impl Lane {
    fn start(
        host: &Host,
        rules: &Rules,
        opts: ScanOptions,
        deep: bool,
        done: Sender<Done>,
    ) -> io::Result<Lane> {
        let (tx, rx) = channel::<String>();
        let (host, rules) = (host.clone(), rules.clone());
        std::thread::Builder::new()
            .name(if deep { "scan-deep" } else { "scan" }.into())
            .spawn(move || {
                for why in rx {
                    let t = Instant::now();
                    let report = scan::run(&host, &rules, &opts);
                    let d = Done {
                        why,
                        deep,
                        took: t.elapsed(),
                        report,
                    };
                    if done.send(d).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Lane {
            tx,
            busy_since: None,
            pending: None,
        })
    }

    fn request(&mut self, why: String) {
        if self.busy_since.is_some() {
            self.pending = Some(why);
        } else if self.tx.send(why).is_ok() {
            self.busy_since = Some(Instant::now());
        }
    }

    fn finished(&mut self) {
        self.busy_since = None;
        if let Some(why) = self.pending.take() {
            self.request(why);
        }
    }
}

/// Both lanes and where their scans end.
pub struct Lanes {
    light: Lane,
    deep: Lane,
    pub done: Receiver<Done>,
}

impl Lanes {
    /// Starts both lanes; `opts` is the scan's options (checks are set
    /// here), with `sample` as the CPU sample of each scan.
    pub fn start(
        host: &Host,
        rules: &Rules,
        opts: &ScanOptions,
        sample: Duration,
    ) -> io::Result<Lanes> {
        let (tx, done) = channel();
        let mut light = opts.clone();
        light.interval = sample;
        light.checks = LIGHT.to_vec();
        let mut deep = light.clone();
        deep.checks = Check::ALL.to_vec();
        Ok(Lanes {
            light: Lane::start(host, rules, light, false, tx.clone())?,
            deep: Lane::start(host, rules, deep, true, tx)?,
            done,
        })
    }

    /// Asks for a scan: at once if its lane is free, else when it is.
    pub fn request(&mut self, why: String, deep: bool) {
        self.lane(deep).request(why);
    }

    /// Marks the lane of `d` free again (and starts its pending request).
    pub fn finished(&mut self, d: &Done) {
        self.lane(d.deep).finished();
    }

    /// How long the lane's current scan has run, if one does.
    pub fn running(&self, deep: bool) -> Option<Duration> {
        let l = if deep { &self.deep } else { &self.light };
        l.busy_since.map(|t| t.elapsed())
    }

    fn lane(&mut self, deep: bool) -> &mut Lane {
        if deep {
            &mut self.deep
        } else {
            &mut self.light
        }
    }
}
