//! `mu serve` with real clients over TCP: a 3-process cluster speaking the Redis protocol.
//! Commands on a follower's port go through the leader's log; pipelined replies come back in
//! order; bad input gets Redis's errors; and a client of a surviving replica keeps working
//! across a leader kill, with every INCR it was answered applied exactly once. No timing is
//! asserted; deadlines only turn a hang into a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use runtime_linux::cluster::Cluster;
use runtime_linux::demo::serve_cluster;
use runtime_linux::port::Stat;

/// A minimal RESP client: sends arrays of bulk strings, reads one reply as its text.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => panic!("port {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, args: &[&str]) {
        let mut frame = format!("*{}\r\n", args.len());
        for arg in args {
            frame.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.writer.write_all(frame.as_bytes()).unwrap();
    }

    /// One reply: `+OK`, `-ERR ...`, `:5`, a bulk's text, `(nil)`, or an array's items joined.
    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a reply line");
        let line = line.trim_end().to_string();
        match line.as_bytes().first() {
            Some(b'$') if line == "$-1" => "(nil)".into(),
            Some(b'$') => {
                let len: usize = line[1..].parse().unwrap();
                let mut bytes = vec![0; len + 2];
                self.reader.read_exact(&mut bytes).unwrap();
                String::from_utf8_lossy(&bytes[..len]).into_owned()
            }
            Some(b'*') => {
                let n: i64 = line[1..].parse().unwrap();
                let items: Vec<String> = (0..n.max(0)).map(|_| self.reply()).collect();
                format!("[{}]", items.join(","))
            }
            _ => line,
        }
    }

    fn call(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply()
    }
}

fn start(first_port: u16) -> Cluster {
    let exe = Path::new(env!("CARGO_BIN_EXE_mu"));
    let cluster = serve_cluster(exe, 3, first_port, 1024).expect("the cluster starts");
    cluster
        .await_settled(Duration::from_secs(30))
        .expect("a leader on the fast path");
    cluster
}

/// Ports per test process, so that concurrent test runs do not collide.
fn first_port(test: u16) -> u16 {
    21_000 + (std::process::id() % 500) as u16 * 16 + test * 4
}

fn leader_and_follower(cluster: &Cluster) -> (u8, u8) {
    let leader = cluster.leader().expect("a leader");
    let follower = (0..3).find(|&id| id != leader).unwrap();
    (leader, follower)
}

#[test]
fn commands_on_any_replica_go_through_the_log() {
    let base = first_port(0);
    let cluster = start(base);
    let (leader, follower) = leader_and_follower(&cluster);
    let mut on_follower = Client::connect(base + follower as u16);
    let mut on_leader = Client::connect(base + leader as u16);
    assert_eq!(on_follower.call(&["PING"]), "+PONG");
    assert_eq!(on_follower.call(&["SET", "k", "v1"]), "+OK");
    // Linearizable: a write acknowledged through one replica is read through another.
    assert_eq!(on_leader.call(&["GET", "k"]), "v1");
    assert_eq!(on_leader.call(&["SET", "k", "v2"]), "+OK");
    assert_eq!(on_follower.call(&["GET", "k"]), "v2");
    assert_eq!(on_follower.call(&["INCR", "n"]), ":1");
    assert_eq!(on_follower.call(&["INCRBY", "n", "41"]), ":42");
    assert_eq!(
        on_follower.call(&["MGET", "k", "n", "none"]),
        "[v2,42,(nil)]"
    );
    assert!(on_follower
        .call(&["INCR", "k"])
        .starts_with("-ERR value is not an integer"));
    let unknown = on_follower.call(&["NOSUCH", "a"]);
    assert!(
        unknown.starts_with("-ERR unknown command 'NOSUCH'"),
        "{unknown}"
    );
    assert_eq!(on_follower.call(&["PING"]), "+PONG", "the connection stays");
    // Pipelined: 100 commands in one write, replies in order.
    for i in 0..100 {
        on_follower.send(&["SET", &format!("p{i}"), &i.to_string()]);
        on_follower.send(&["GET", &format!("p{i}")]);
    }
    for i in 0..100 {
        assert_eq!(on_follower.reply(), "+OK");
        assert_eq!(on_follower.reply(), i.to_string());
    }
    assert_eq!(on_leader.call(&["DBSIZE"]), ":102");
    let info = on_follower.call(&["INFO"]);
    assert!(info.contains("role:follower"), "{info}");
    assert!(info.contains(&format!("leader:{leader}")), "{info}");
    // A protocol error is answered, then the connection closes.
    on_follower.writer.write_all(b"*1\r\n$x\r\n").unwrap();
    assert!(on_follower.reply().starts_with("-ERR Protocol error"));
    cluster.shutdown();
}

#[test]
fn a_client_of_a_survivor_keeps_working_across_a_leader_kill_exactly_once() {
    let base = first_port(1);
    let mut cluster = start(base);
    let (leader, follower) = leader_and_follower(&cluster);
    let mut client = Client::connect(base + follower as u16);
    let mut answered = Vec::new();
    let mut unknown = 0;
    for i in 0..400 {
        if i == 100 {
            cluster.kill(leader);
        }
        // Pipelined in fours, so that some are in flight when the leader dies.
        if i % 4 == 0 {
            for _ in 0..4 {
                client.send(&["INCR", "counter"]);
            }
        }
        let reply = client.reply();
        match reply.strip_prefix(':') {
            Some(n) => answered.push(n.parse::<u64>().unwrap()),
            None if reply.contains("outcome") => unknown += 1,
            None => panic!("INCR {i}: {reply}"),
        }
    }
    let total: u64 = client.call(&["GET", "counter"]).parse().unwrap();
    // Every INCR answered with a value was applied once: the values are 1, 2, 3, ... without a
    // gap or a repeat, except where an INCR of unknown outcome took one.
    let mut sorted = answered.clone();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        answered.len(),
        "a value answered twice: {answered:?}"
    );
    assert!(
        answered.windows(2).all(|w| w[0] < w[1]),
        "replies out of order: {answered:?}"
    );
    assert!(
        total >= answered.len() as u64 && total <= answered.len() as u64 + unknown,
        "counter {total}, {} answered, {unknown} unknown: applied twice or lost",
        answered.len()
    );
    let info = client.call(&["INFO"]);
    let retried = info
        .lines()
        .find_map(|l| l.strip_prefix("proposals_retried:"))
        .expect("INFO counts retries");
    let new_leader = cluster.leader().expect("a new leader");
    assert_ne!(new_leader, leader, "the killed leader was replaced");
    assert!(
        cluster.port(follower).unwrap().get(Stat::Applied) >= total,
        "the survivor applied what it answered"
    );
    eprintln!(
        "leader {leader} killed after 100 INCRs; {} answered, {unknown} of unknown outcome, \
         counter {total}, {retried} proposed again; replica {new_leader} leads now",
        answered.len()
    );
    cluster.shutdown();
}
