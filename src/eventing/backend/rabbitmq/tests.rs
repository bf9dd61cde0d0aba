//! Unit tests of the parts that need no RabbitMQ: names, filter push-down,
//! the AMQP binding and the connection settings. The backend against a real
//! RabbitMQ is tested in tests/rabbitmq.rs.
