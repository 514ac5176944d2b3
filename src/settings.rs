//! Settings sections: each is a `clap::Args` struct (its flags, help and defaults written
//! once) that is also a serialisable part of a library configuration, e.g.
//! [`crate::train::TrainConfig`], [`crate::dataset::DataConfig`],
//! [`crate::device::DeviceConfig`]. [`clap_defaults`] gives a section's `Default`.

/// The values `clap` gives a section when no flag is passed: the one place defaults live.
///
/// # Panics
/// If a field of `T` has neither a default nor is optional (a programmer error, caught by
/// `train::config`'s `defaults_are_the_command_lines` test).
pub fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("every setting has a default");
    T::from_arg_matches(&matches).expect("the defaults parse")
}
