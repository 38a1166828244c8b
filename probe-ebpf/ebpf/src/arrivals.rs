//! Wire-side arrival times: `sk_data_ready` on watched (network namespace, port) pairs.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use inferscope_common::{watch_key, ArrivalEvent, EventKind, AF_INET, AF_INET6};

use crate::{config, count_loss, header, rk, sock_netns, BPF_RB_NO_WAKEUP, EVENTS, WATCH_PORTS};

const IPPROTO_TCP: u16 = 6;

/// `sk_data_ready(sk)`: data was queued on a socket. For TCP sockets whose local port is watched
/// (the servers' listening ports, per network namespace), report the time and `rcv_nxt`, so userspace can tell when a
/// request's bytes reached the host, not only when the server read them.
#[raw_tracepoint(tracepoint = "sk_data_ready")]
pub fn sk_data_ready(ctx: RawTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let o = &cfg.offsets;
    let sk: u64 = ctx.arg(0);
    let family = rk::<u16>(sk + o.skc_family as u64).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let lport = rk::<u16>(sk + o.skc_num as u64).unwrap_or(0);
    let netns = sock_netns(cfg, sk);
    // SAFETY: the value is only tested for presence.
    if unsafe { WATCH_PORTS.get(&watch_key(netns, lport)) }.is_none() {
        return 0;
    }
    if rk::<u16>(sk + o.sock_protocol as u64).unwrap_or(0) != IPPROTO_TCP {
        return 0;
    }
    let mut ev = ArrivalEvent {
        header: header(EventKind::SockArrival, 0),
        family,
        _pad: 0,
        lport,
        rport: u16::from_be(rk::<u16>(sk + o.skc_dport as u64).unwrap_or(0)),
        laddr: [0; 16],
        raddr: [0; 16],
        rcv_nxt: rk::<u32>(sk + o.tcp_rcv_nxt as u64).unwrap_or(0),
        netns,
    };
    if family == AF_INET {
        let l = rk::<[u8; 4]>(sk + o.skc_rcv_saddr as u64).unwrap_or([0; 4]);
        let r = rk::<[u8; 4]>(sk + o.skc_daddr as u64).unwrap_or([0; 4]);
        ev.laddr[..4].copy_from_slice(&l);
        ev.raddr[..4].copy_from_slice(&r);
    } else {
        ev.laddr = rk::<[u8; 16]>(sk + o.skc_v6_rcv_saddr as u64).unwrap_or([0; 16]);
        ev.raddr = rk::<[u8; 16]>(sk + o.skc_v6_daddr as u64).unwrap_or([0; 16]);
    }
    if EVENTS
        .output::<ArrivalEvent>(&ev, BPF_RB_NO_WAKEUP)
        .is_err()
    {
        count_loss(EventKind::SockArrival);
    }
    0
}
