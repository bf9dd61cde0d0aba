//! Unit tests of the RabbitmqSource manifest and message mapping; consuming
//! from a real RabbitMQ is tested in tests/rabbitmq.rs.
