from common.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "analyticsservice"
