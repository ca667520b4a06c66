"""The local development stack (Tansu + Redis), demos, and the data that feeds them."""
