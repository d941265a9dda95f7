//! A blocking client for the control connection, for the host side (sandbox, tests). Events
//! that arrive while a response is awaited are queued for [`Client::next_event`].

use crate::frame::{decode, read_frame, write_frame, FrameError};
use crate::message::*;
use crate::PROTOCOL_VERSION;
use std::collections::VecDeque;
use std::io::{Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent connection")]
    Frame(#[from] FrameError),
    #[error("the agent closed the connection")]
    Closed,
    #[error("the agent answered request {got} while {want} was awaited")]
    UnexpectedId { got: u64, want: u64 },
    #[error("the agent refused: {0}")]
    Refused(ErrorReply),
    #[error("the agent answered {0:?}, which does not fit the request")]
    UnexpectedReply(Box<ResponseBody>),
}

pub struct Client<S> {
    stream: S,
    next_id: u64,
    events: VecDeque<Event>,
}

impl<S: Read + Write> Client<S> {
    /// Says hello on a fresh control connection.
    pub fn handshake(stream: S) -> Result<Client<S>, ClientError> {
        let mut client = Client {
            stream,
            next_id: 0,
            events: VecDeque::new(),
        };
        client.call(RequestBody::Hello {
            version: PROTOCOL_VERSION,
        })?;
        Ok(client)
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    fn read_message(&mut self) -> Result<AgentMessage, ClientError> {
        let frame = read_frame(&mut self.stream)?.ok_or(ClientError::Closed)?;
        Ok(decode(&frame)?)
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        write_frame(&mut self.stream, &Request { id, body })?;
        loop {
            match self.read_message()? {
                AgentMessage::Event(e) => self.events.push_back(e),
                AgentMessage::Response(r) if r.id == id => {
                    return r.result.map_err(ClientError::Refused)
                }
                AgentMessage::Response(r) => {
                    return Err(ClientError::UnexpectedId {
                        got: r.id,
                        want: id,
                    })
                }
            }
        }
    }

    /// A call whose only good answer is `Done`.
    pub fn call_done(&mut self, body: RequestBody) -> Result<(), ClientError> {
        match self.call(body)? {
            ResponseBody::Done => Ok(()),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// Waits for a process to exit (its stdout and stderr delivered first).
    pub fn wait(
        &mut self,
        container_id: &str,
        exec_id: Option<&str>,
    ) -> Result<ProcessExit, ClientError> {
        match self.call(RequestBody::WaitProcess {
            container_id: container_id.to_string(),
            exec_id: exec_id.map(str::to_string),
        })? {
            ResponseBody::Exited(exit) => Ok(exit),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// The events that arrived while responses were awaited, without waiting for more.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// The next pushed event, waiting for one if none is queued.
    pub fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        match self.read_message()? {
            AgentMessage::Event(e) => Ok(e),
            AgentMessage::Response(r) => Err(ClientError::UnexpectedId { got: r.id, want: 0 }),
        }
    }
}
