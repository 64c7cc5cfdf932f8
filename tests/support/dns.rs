//! A DNS server on 127.0.0.1 whose answers a test changes while the controller
//! runs: A, AAAA and CNAME records with a TTL, NXDOMAIN, SERVFAIL, or silence.
//! Wire format by hickory-proto (the resolver's own codec); no other server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// What the server says about one name.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Addresses (A and AAAA by family) with a TTL in seconds.
    Addresses(Vec<IpAddr>, u32),
    /// An alias: the server follows it through its own names.
    Alias(String, u32),
    NxDomain,
    ServFail,
    /// No reply at all: the resolver times out.
    Silence,
}

#[derive(Default)]
struct Zone {
    answers: HashMap<String, Answer>,
    queries: HashMap<String, usize>,
    /// Names whose replies are sent only after this long.
    delays: HashMap<String, std::time::Duration>,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    /// Binds a UDP port on 127.0.0.1 and serves until dropped.
    pub async fn start() -> DnsServer {
        DnsServer::start_at([127, 0, 0, 1].into()).await
    }

    /// Binds a UDP port on `ip` (an address of a network namespace the test made).
    pub async fn start_at(ip: IpAddr) -> DnsServer {
        let socket = Arc::new(UdpSocket::bind((ip, 0)).await.expect("bind DNS server"));
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let served = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else { return };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                match respond(&served, &query) {
                    Some((reply, delay)) if delay.is_zero() => {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                    Some((reply, delay)) => {
                        let socket = socket.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = socket.send_to(&reply, peer).await;
                        });
                    }
                    None => {}
                }
            }
        });
        DnsServer { addr, zone, task }
    }

    /// `--dns-server` value for the controller.
    pub fn flag(&self) -> String {
        self.addr.to_string()
    }

    pub fn set(&self, name: &str, answer: Answer) {
        self.zone.lock().unwrap().answers.insert(name.trim_end_matches('.').to_string(), answer);
    }

    /// Replies for `name` leave only after `delay` (a slow upstream).
    pub fn delay(&self, name: &str, delay: std::time::Duration) {
        self.zone.lock().unwrap().delays.insert(name.trim_end_matches('.').to_string(), delay);
    }

    /// Queries received for `name` (A and AAAA each count).
    pub fn queries(&self, name: &str) -> usize {
        self.zone.lock().unwrap().queries.get(name).copied().unwrap_or(0)
    }
}

fn respond(zone: &Mutex<Zone>, query: &Message) -> Option<(Vec<u8>, std::time::Duration)> {
    let question = query.queries.first()?;
    let qtype = question.query_type();
    let mut zone = zone.lock().unwrap();
    let mut name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    *zone.queries.entry(name.clone()).or_default() += 1;
    let delay = zone.delays.get(&name).copied().unwrap_or_default();
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_query(question.clone());
    // Follow aliases the zone knows, as a recursive server would (bounded).
    for _ in 0..8 {
        let owner = Name::from_ascii(format!("{name}.")).ok()?;
        match zone.answers.get(&name).cloned() {
            None | Some(Answer::NxDomain) => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                break;
            }
            Some(Answer::ServFail) => {
                reply.metadata.response_code = ResponseCode::ServFail;
                break;
            }
            Some(Answer::Silence) => return None,
            Some(Answer::Alias(target, ttl)) => {
                let target_name = Name::from_ascii(format!("{target}.")).ok()?;
                reply.add_answer(Record::from_rdata(owner, ttl, RData::CNAME(CNAME(target_name))));
                if qtype == RecordType::CNAME {
                    break; // asked for the alias itself
                }
                name = target;
            }
            Some(Answer::Addresses(addresses, ttl)) => {
                for ip in addresses {
                    let rdata = match (ip, qtype) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                        _ => continue,
                    };
                    reply.add_answer(Record::from_rdata(owner.clone(), ttl, rdata));
                }
                break;
            }
        }
    }
    Some((reply.to_vec().ok()?, delay))
}
