//! Image layers attached to a pod's running VM, each in a spare disk slot: a layer several
//! containers use is attached once, and its slot is emptied when the last of them is deleted.
//! Layers the VM booted with stay where they are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Attached {
    serial: String,
    users: usize,
}

#[derive(Default)]
pub struct AttachedLayers {
    by_image: HashMap<PathBuf, Attached>,
}

impl AttachedLayers {
    /// The guest's serial for each image, attaching with `attach` those not attached yet. On
    /// failure nothing this call took stays taken; what it attached is returned to eject.
    pub fn acquire(
        &mut self,
        images: &[PathBuf],
        mut attach: impl FnMut(&Path) -> Result<String, String>,
    ) -> Result<Vec<String>, (String, Vec<String>)> {
        let mut serials = Vec::new();
        for (i, image) in images.iter().enumerate() {
            if let Some(a) = self.by_image.get_mut(image) {
                a.users += 1;
                serials.push(a.serial.clone());
                continue;
            }
            match attach(image) {
                Ok(serial) => {
                    self.by_image.insert(
                        image.clone(),
                        Attached {
                            serial: serial.clone(),
                            users: 1,
                        },
                    );
                    serials.push(serial);
                }
                Err(e) => {
                    let eject = self.release(&images[..i]);
                    return Err((e, eject));
                }
            }
        }
        Ok(serials)
    }

    /// Drops one use of each image; the serials whose last user this was, to eject.
    pub fn release(&mut self, images: &[PathBuf]) -> Vec<String> {
        let mut eject = Vec::new();
        for image in images {
            let Some(a) = self.by_image.get_mut(image) else {
                continue;
            };
            a.users -= 1;
            if a.users == 0 {
                if let Some(a) = self.by_image.remove(image) {
                    eject.push(a.serial);
                }
            }
        }
        eject
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn a_shared_layer_is_attached_once_and_ejected_with_its_last_user() {
        let mut layers = AttachedLayers::default();
        let mut attached = Vec::new();
        let mut next = 0;
        let mut attach = |image: &Path| {
            attached.push(image.to_path_buf());
            next += 1;
            Ok(format!("slot{next}"))
        };
        let a = layers
            .acquire(&paths(&["/base", "/a"]), &mut attach)
            .unwrap();
        let b = layers
            .acquire(&paths(&["/base", "/b"]), &mut attach)
            .unwrap();
        assert_eq!(a, ["slot1", "slot2"]);
        assert_eq!(b, ["slot1", "slot3"]);
        assert_eq!(attached, paths(&["/base", "/a", "/b"]));
        assert_eq!(layers.release(&paths(&["/base", "/a"])), ["slot2"]);
        assert_eq!(layers.release(&paths(&["/base", "/b"])), ["slot1", "slot3"]);
        assert!(layers.release(&paths(&["/base"])).is_empty());
    }

    #[test]
    fn a_failed_attach_gives_back_what_the_call_took() {
        let mut layers = AttachedLayers::default();
        layers
            .acquire(&paths(&["/base"]), |_| Ok("slot0".into()))
            .unwrap();
        let (why, eject) = layers
            .acquire(&paths(&["/base", "/new", "/full"]), |image| {
                if image == Path::new("/full") {
                    Err("all 8 spare disk slots are in use".into())
                } else {
                    Ok("slot1".into())
                }
            })
            .unwrap_err();
        assert!(why.contains("8 spare"));
        assert_eq!(eject, ["slot1"]);
        // /base keeps its first user only.
        assert_eq!(layers.release(&paths(&["/base"])), ["slot0"]);
    }
}
