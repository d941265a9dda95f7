//! Task events to containerd, in the order they happen: one thread publishes them from a
//! channel, so an RPC never waits on containerd and Create → Start → Exit → Delete keep their
//! order. The task service sees only [`EventSink`]; tests record what it publishes.

use containerd_shim::event::Event;
use containerd_shim::publisher::RemotePublisher;
use std::sync::mpsc;
use std::time::Duration;

pub type Message = Box<dyn Event + Send>;

/// Where the task service's events go. Publishing never blocks on containerd.
pub trait EventSink: Send + Sync {
    fn publish(&self, event: Message);
}

#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Message>,
}

impl Events {
    pub fn start(publisher: RemotePublisher, namespace: String) -> Events {
        let (tx, rx) = mpsc::channel::<Message>();
        std::thread::spawn(move || {
            for event in rx {
                let topic = event.topic();
                let ctx = containerd_shim::protos::ttrpc::context::with_timeout(
                    Duration::from_secs(5).as_nanos() as i64,
                );
                if let Err(e) = publisher.publish(ctx, &topic, &namespace, event) {
                    log::warn!("publish {topic}: {e}");
                }
            }
        });
        Events { tx }
    }
}

impl EventSink for Events {
    fn publish(&self, event: Message) {
        let _ = self.tx.send(event);
    }
}
