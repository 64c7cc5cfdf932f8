fn main() {
    print!("{}", xbackend_controller::api::crd_yaml());
}
