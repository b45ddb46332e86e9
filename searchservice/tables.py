from common.database import service_metadata

metadata = service_metadata("searchservice")
